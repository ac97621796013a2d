"""The notebooks run top to bottom (their code cells, in a fresh interpreter, offline)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, run_fresh_python

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.mpc
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_cells_run(path, monkeypatch):
    cells = json.loads(path.read_text())["cells"]
    code = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    script = (
        f"import os, json\nos.chdir({str(path.parent)!r})\n"
        f"exec(compile({code!r}, {path.name!r}, 'exec'))\n"
        "print(json.dumps({'reveals': client.reveals, 'labels': int(len(labels)), 'dataset': dataset.name}))\n"
    )
    out = run_fresh_python(script, timeout=900)
    assert out["reveals"] == 2 and out["labels"] == 64
    if (REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz").exists():
        assert out["dataset"] == "pneumoniamnist"


def test_there_is_a_notebook():
    assert NOTEBOOKS, "notebooks/ should demonstrate the collaboration"
