"""docs/tutorial.ipynb runs, top to bottom, in a fresh kernel (nbclient), so it never rots."""

import os

import nbformat
from nbclient import NotebookClient

from helpers import ROOT

NOTEBOOK = os.path.join(ROOT, "docs", "tutorial.ipynb")


def test_the_tutorial_runs_and_shows_its_results(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the notebook's tempfile.mkdtemp writes
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not [c for c in notebook.cells if c.cell_type == "code" and c.outputs], "commit it with outputs cleared"
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()  # raises CellExecutionError, with the cell, on any error
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "positional neurons; the strongest" in text and "minus its control" in text, text[-2000:]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure was drawn
