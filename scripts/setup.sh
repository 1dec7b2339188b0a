#!/usr/bin/env bash
# Creates (or reuses) .venv and installs the project with its dev tools.
# On a machine without CUDA the CPU torch build goes in first and constraints.txt pins it, so no later
# install (nor a package's isolated build) can swap in a multi-gigabyte CUDA build.
# On a GPU machine, install the CUDA torch you want into .venv first: the pin then matches nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
  PIP_CONSTRAINT="$PWD/constraints.txt" .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
