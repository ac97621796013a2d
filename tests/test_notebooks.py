"""The notebooks run top to bottom in a real Jupyter kernel (nbclient), offline, in a small configuration.

Each notebook has a code cell tagged ``parameters`` (papermill's convention);
the test inserts a cell tagged ``injected-parameters`` right after it with
the CI configuration (fewer owners, epochs and queries; no download), then
executes every cell with the ``python3`` kernel that ipykernel installs
inside the running environment (its argv ``python`` is resolved by
jupyter_client to ``sys.executable``, which the last cell checks). Nothing is
written: the stored notebooks keep the outputs of their full configuration.
"""

from __future__ import annotations

import json
import sys

import ipykernel  # noqa: F401  (the test extra installs these three; a missing one must fail, not skip)
import nbclient
import nbformat
import pytest

from tests.helpers import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

# The small configuration per notebook (every cell still runs).
CI_PARAMETERS = {
    "01-collaboration.ipynb": dict(OWNERS=4, EPOCHS=3, NOISE_SEEDS=2, MPC_QUERIES=8, TRAIN_LIMIT=400,
                                   ALLOW_DOWNLOAD=False),
    # 02: its PLD accounting grows with the number of queries composed (Confident-GNMax's most): short horizons
    "02-privacy-utility.ipynb": dict(OWNERS=4, EPOCHS=3, NOISE_SEEDS=2, TRAIN_LIMIT=400, MAX_QUERIES=20,
                                     COMPARE_QUERIES=20, COMPARE_TOTALS=[2.0, 10.0], EPSILONS=[0.5, 2.0],
                                     ALLOW_DOWNLOAD=False),
    "03-membership-inference.ipynb": dict(OWNERS=3, EPOCHS=20, MAX_MEMBERS=40, EPSILONS=[1.0], AUG_N=4,
                                          REPEATS=[1, 3], RESAMPLES=50, MPC_RECORDS=4, MPC_DRAWS=2),
    "05-honest-story.ipynb": dict(OWNERS=5, EPOCHS=5, TOTALS=[1.0, 10.0], NOISE_SEEDS=2, OVERFIT_EPOCHS=30,
                                  MAX_MEMBERS=30, RESAMPLES=50),
    "04-student.ipynb": dict(RESULTS="../docs/results", DATASETS=["mnist", "pneumonia"]),  # reads results only
}
EXPECTED = ["01-collaboration.ipynb", "02-privacy-utility.ipynb", "03-membership-inference.ipynb",
            "04-student.ipynb", "05-honest-story.ipynb"]


def inject(nb, parameters: dict) -> None:
    """Papermill's convention: a cell tagged ``injected-parameters`` right after the ``parameters`` cell."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "# Parameters injected by tests/test_notebooks.py\n" + "\n".join(
        f"{name} = {value!r}" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)


def test_the_four_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_with_outputs_and_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in code), \
        "stored outputs must come from the full configuration"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "executed top to bottom, every code cell once"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in code for o in c.outputs), "a plot is stored"


@pytest.mark.mpc
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_a_kernel(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("HOME", str(tmp_path))  # nothing may land in (or be read from) the user's ~/.medmnist
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    inject(nb, CI_PARAMETERS[path.name])
    nb.cells.append(nbformat.v4.new_code_cell("import json, sys\nprint(json.dumps({'executable': sys.executable}))"))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=False,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every code cell ran"
    last = json.loads("".join(o["text"] for o in code[-1].outputs if o.get("name") == "stdout"))
    assert last["executable"] == sys.executable, "the kernel is this environment's python"
