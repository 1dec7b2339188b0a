#!/usr/bin/env bash
# The efficiency harness on a GPU, prepared: on a bare GPU machine whose python3 has a CUDA torch, install
# what `bench/bench_model.py` needs beside torch (never torch itself), then run it at paper size in bf16 at
# 16 and 64 frames with batches that fill the device, and write one JSON (and its plot) to $OUT.
# Each clip length runs under its own time limit, so a slow 64-frame run still leaves the 16-frame numbers.
#
#   bash bench/gpu.sh                                   # on the GPU machine, from anywhere in the checkout
#   FRAMES="2 4" PYTHON=.venv/bin/python bash bench/gpu.sh --device cpu --size tiny --px 32   # CPU smoke
#
# Arguments are `trajtok bench model` options; they come after the defaults below, so they win.
# Environment: PYTHON (default python3), OUT (default bench-out/gpu), FRAMES (default "16 64"),
# SECONDS_PER_LENGTH (default 210), WHEELS (a folder of wheels, for a machine without a package registry).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench-out/gpu}
FRAMES=${FRAMES:-16 64}
SECONDS_PER_LENGTH=${SECONDS_PER_LENGTH:-210}
SITE="$PWD/.gpu-site"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

needs="omegaconf scipy tqdm cv2 av matplotlib"
if ! "$PYTHON" -c "import ${needs// /, }" 2>/dev/null; then
  echo "installing into $SITE: omegaconf scipy tqdm opencv-python-headless av matplotlib (not torch)"
  from=()
  [ -n "${WHEELS:-}" ] && from=(--no-index --find-links "$WHEELS")
  "$PYTHON" -m pip install -q "${from[@]}" --target "$SITE" \
    omegaconf scipy tqdm opencv-python-headless av matplotlib
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

mkdir -p "$OUT"
defaults=(
  --size paper --precision bf16 --steps 3 --rounds 2 --warmup 1
  --models vit3d vit3d+tome vit3d+rlt trajvit2 trajvit2-n4 trajvit2-chunk8
)
parts=()
for frames in $FRAMES; do
  part="$OUT/gpu-$frames.json"
  if timeout "$SECONDS_PER_LENGTH" "$PYTHON" bench/bench_model.py "${defaults[@]}" "$@" \
      --frames "$frames" --json "$part"; then
    parts+=("$part")
  else
    echo "T=$frames: no result within ${SECONDS_PER_LENGTH}s (or it failed); going on" >&2
  fi
done
[ ${#parts[@]} -gt 0 ] || { echo "no clip length finished" >&2; exit 1; }
"$PYTHON" - "$OUT" "${parts[@]}" <<'PY'
"""One JSON (and plot) from the per-length parts: their rows in order, the first part's record."""
import json
import sys
from pathlib import Path

sys.path.insert(0, "bench")
from bench_model import plot  # noqa: E402

out, parts = Path(sys.argv[1]), [json.loads(Path(p).read_text()) for p in sys.argv[2:]]
result = {**parts[0], "rows": [row for part in parts for row in part["rows"]]}
result["settings"]["frames"] = sorted({row["frames"] for row in result["rows"]})
(out / "gpu.json").write_text(json.dumps(result, indent=2))
plot(result, out / "gpu.png")
print(f"wrote {out / 'gpu.json'} and {out / 'gpu.png'}: {len(result['rows'])} rows")
PY
