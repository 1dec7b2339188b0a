"""Imports go one way: data and models < evaluation < training < launch; the pipeline needs neither
training nor evaluation. Each module is imported in a fresh interpreter, so what it pulls in is its own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LOWER_LAYERS = ("trajtok.config", "trajtok.rundir", "trajtok.data.loader", "trajtok.models.registry")
LAYERS = [  # module, packages it must not load
    (",".join(LOWER_LAYERS), ("trajtok.eval", "trajtok.train", "trajtok.tracking", "pipeline", "launch")),
    ("trajtok.models.weights,trajtok.logged_model", ("trajtok.eval", "trajtok.train", "launch")),
    ("trajtok.eval.run", ("trajtok.train", "launch", "pipeline")),
    ("trajtok.train.loop", ("launch", "pipeline")),
    ("pipeline.job", ("trajtok.train", "trajtok.eval", "launch")),
    ("trajtok.distributed", ("mlflow", "trajtok.tracking", "deepspeed", "ray")),
]


@pytest.mark.parametrize(("modules", "forbidden"), LAYERS, ids=[modules for modules, _ in LAYERS])
def test_a_layer_does_not_import_the_layers_above_it(modules: str, forbidden: tuple[str, ...]) -> None:
    script = (
        f"import importlib, json, sys\nfor name in {modules.split(',')!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    wrong_way = [name for name in loaded if any(name == f or name.startswith(f"{f}.") for f in forbidden)]
    assert not wrong_way, f"{modules} imports {wrong_way}"
