# The two commands of the README: `make demo` (the main job on built-in data) and `make test`.
.PHONY: setup demo test lint bench slurm-up slurm-down

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/trajtok demo

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .

# A one-node SLURM cluster on this machine (root; installs slurm-wlm, munge, MariaDB if missing) for trying
# `trajtok submit ... launch.backend=slurm`; then `export SLURM_CONF=/tmp/slurm-local/etc/slurm.conf`.
slurm-up:
	@bash scripts/slurm-local.sh

slurm-down:
	@bash scripts/slurm-local-stop.sh
