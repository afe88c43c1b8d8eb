"""The notebooks: the organism's two run here top to bottom (their last cells check the numbers they show), the
real-checkpoint one is well-formed Python; all are committed without outputs."""

import ast
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import optimised_environment

NOTEBOOKS = Path(__file__).resolve().parent.parent / "experiments" / "notebooks"
NAMES = ("01_sgm_on_the_organism", "02_sweep_and_pareto", "03_real_checkpoint_colab")


def _read(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def test_notebooks_are_committed_without_outputs():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    for name in NAMES:
        book = _read(name)
        nbformat.validate(book)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name}: outputs left in a cell"


def _python(source: str) -> str:
    """A cell without its shell commands (IPython's `!...` lines and their backslash continuations)."""
    kept, shell, continued = [], False, False
    for line in source.splitlines():
        shell = line.lstrip().startswith("!") or (shell and continued)
        continued = line.rstrip().endswith("\\")
        if not shell:
            kept.append(line)
    return "\n".join(kept)


def test_the_real_checkpoint_notebook_is_python():
    for cell in _read(NAMES[2]).cells:
        if cell.cell_type == "code":
            ast.parse(_python(cell.source))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES[:2])
def test_organism_notebook_runs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SGM_NOTEBOOK_WORK", str(tmp_path))
    monkeypatch.setenv("XLA_FLAGS", optimised_environment()["XLA_FLAGS"])  # the kernel's: it runs long enough
    book = _read(name)
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    last = [cell for cell in book.cells if cell.cell_type == "code"][-1]
    printed = "".join(output.get("text", "") for output in last.outputs)
    assert "checked" in printed, last.outputs
    assert os.listdir(tmp_path)
