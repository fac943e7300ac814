"""The notebooks in ``notebooks/`` run top to bottom, offline, on the CPU, in this environment's kernel.

Each notebook is executed with nbclient in a fresh temporary working folder (where it writes its
``notebook-output/``), so a cell error, a renamed option or a changed summary key fails here. The
kernel is this interpreter (``sys.executable``), pinned through a kernelspec in a temporary
``JUPYTER_PATH`` (nothing is registered anywhere else) and checked from inside the kernel.

The stored copies keep their outputs, because they are read on GitHub; they are checked to be
executed, free of errors and small.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_train_your_own.ipynb", "03_crop_stress.ipynb"]
MAX_STORED_BYTES = 1_500_000  # the three together, outputs included


def _pinned_kernel(tmp: Path) -> str:
    """A kernelspec ``python3`` that runs ipykernel in this interpreter; returns the JUPYTER_PATH folder."""
    root = tmp / "jupyter"
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (geovision tests)",
        "language": "python",
    }))
    return str(root)


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_PATH", _pinned_kernel(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    work = tmp_path / "work"
    work.mkdir()
    before = sorted(p.name for p in NOTEBOOKS.iterdir())

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    check = nbformat.v4.new_code_cell(
        f"import os, sys\n"
        f"assert sys.prefix == {sys.prefix!r}, f'kernel runs {{sys.executable}}, not this environment'\n"
        f"assert os.getcwd() == {str(work)!r}, os.getcwd()"
    )
    nb.cells.insert(0, check)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    print(f"{name}: {time.perf_counter() - t0:.1f} s")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # no notices a user would have to silence (tqdm without widgets, Dask's dashboard port)
    stderr = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.output_type == "stream" and o.get("name") == "stderr")
    for notice in ("IProgress not found", "Port 8787", "TqdmWarning"):
        assert notice not in stderr, f"{name} printed {notice!r}:\n{stderr[-2000:]}"
    written = [p for p in (work / "notebook-output").rglob("*") if p.is_file()]
    assert written, "the notebook wrote nothing into its working folder"
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before, "the notebook wrote into the repository"


def test_stored_notebooks_are_executed_and_small() -> None:
    total = 0
    for name in NAMES:
        path = NOTEBOOKS / name
        total += path.stat().st_size
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.execution_count for c in code), f"{name}: store it executed, with outputs"
        counts = [c.execution_count for c in code]
        assert counts == list(range(1, len(code) + 1)), f"{name}: executed out of order: {counts}"
        for cell in code:
            for out in cell.outputs:
                assert out.output_type != "error", f"{name}: a stored cell failed"
                text = json.dumps(out)
                assert "/tmp/" not in text and "/work/" not in text, f"{name}: an output shows a local path"
        assert nb.cells[-1].cell_type == "code" and "MY_" in nb.cells[-1].source, \
            f"{name}: end with the 'do this on your own data' cell"
    assert total <= MAX_STORED_BYTES, f"the stored notebooks take {total} bytes; shrink their figures"
