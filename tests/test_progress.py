"""dsv3_edu.progress: tqdm.auto's bar, whose saved text in a notebook is its last line, not its first."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dsv3_edu.progress import progress

ROOT = Path(__file__).resolve().parents[1]


def test_console_bar_counts_everything():
    bar = progress(range(7), desc="x", disable=True)
    assert list(bar) == list(range(7))


def test_saved_notebook_keeps_the_final_line(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(
        "from dsv3_edu.progress import progress\nfor _ in progress(range(5), desc='steps'):\n    pass")])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    texts = [o.data["text/plain"] for o in nb.cells[0].outputs if o.output_type == "display_data"]
    assert len(texts) == 1 and texts[0].startswith("steps: 100%") and "5/5" in texts[0], texts
    assert nbformat.validate(nb) is None
