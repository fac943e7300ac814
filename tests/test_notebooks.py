"""The notebooks run from top to bottom, so they cannot rot (executed with nbclient in a scratch folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_exist() -> None:
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_train_your_own", "03_crop_stress"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    # the kernel is this interpreter's (ipykernel in the same environment), working in tmp_path
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    executable = [c for c in nb.cells if c.cell_type == "code"]
    assert executable and all(c.get("execution_count") for c in executable)
    errors = [o for c in executable for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert not any(p.suffix in (".tif", ".gpkg") for p in Path(path.parent).iterdir()), \
        "notebooks must write into their working folder, not next to themselves"
    assert os.listdir(tmp_path)  # they did write their results there
