#!/usr/bin/env bash
# Creates (or reuses) .venv and installs the project with its dev tools.
# Torch goes in first: the CPU build torch==2.13.0 unless .venv already has one (a GPU user installs the CUDA
# torch they want first). Every later install is then constrained to exactly that torch, so neither a
# dependency nor a package's isolated build step can swap in a multi-gigabyte CUDA build. With a CUDA torch,
# nvidia-ml-py comes too (the `gpu` extra): MLflow's system metrics need it for the GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
  pin=$(mktemp)
  trap 'rm -f "$pin"' EXIT
  echo "torch==$(.venv/bin/python -c 'import torch; print(torch.__version__)')" > "$pin"
  extras=dev  # and on a machine with a CUDA torch, what MLflow needs to record GPU system metrics
  .venv/bin/python -c 'import sys, torch; sys.exit(torch.version.cuda is None)' && extras=dev,gpu
  PIP_CONSTRAINT="$pin" .venv/bin/python -m pip install -q -e ".[$extras]"
  rm -f .venv/.installed-*; touch "$stamp"
fi
