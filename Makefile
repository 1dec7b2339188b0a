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
