"""Every notebook runs top to bottom in fast mode, and committed notebooks stay clean and small."""
from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from dsv3_edu.grade import clean_notebook, course_notebooks, execute_notebook, kernel_env, notebook_problems
from dsv3_edu.grade.clean import MAX_OUTPUT_BYTES, committed_notebooks, scrub_paths

ROOT = Path(__file__).resolve().parents[1]


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


@pytest.mark.slow
@pytest.mark.parametrize("path", course_notebooks(ROOT), ids=_rel)
def test_notebook_executes_in_fast_mode(path, record_notebook_time):
    """nbclient, kernel python3, DSV3_FAST=1, cwd = the notebook's folder; any error fails the test."""
    t0 = time.perf_counter()
    try:
        execute_notebook(path, fast=True)
    finally:
        record_notebook_time(_rel(path), time.perf_counter() - t0)


def test_fast_kernels_run_one_thread_unless_told(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert kernel_env(fast=True)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in kernel_env(fast=False) and "OMP_NUM_THREADS" not in kernel_env()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert kernel_env(fast=True)["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize("path,allow_outputs", [pytest.param(p, a, id=_rel(p)) for p, a in committed_notebooks(ROOT)])
def test_committed_notebook_is_clean(path, allow_outputs):
    problems = notebook_problems(path, allow_outputs=allow_outputs)
    assert not problems, f"{_rel(path)}: run `python scripts/clean_notebooks.py` or fix:\n" + "\n".join(problems)


def _dirty_notebook():
    cell = new_code_cell("import warnings", execution_count=1)
    cell.metadata["execution"] = {"iopub.execute_input": "2025-01-01T00:00:00"}
    cell.outputs = [
        new_output("stream", name="stderr",
                   text="/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/torch/nn.py:3: UserWarning\n"),
        new_output("error", ename="ValueError", evalue="bad",
                   traceback=["File \x1b[0;32m/home/alice/dsv3-edu/dsv3_edu/model/mla.py:12\x1b[0m"]),
        new_output("display_data", data={"text/plain": "saved to /tmp/run-1/ckpt.pt", "image/png": "iVBORw0KGgo="}),
    ]
    nb = new_notebook(cells=[cell])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"x": "y" * 20_000}}}
    return nb


def test_clean_strips_widgets_timing_and_absolute_paths(tmp_path):
    path = tmp_path / "dirty.ipynb"
    nbformat.write(_dirty_notebook(), path)
    problems = notebook_problems(path)
    for what in ("widget state", "execution timing", "absolute path"):
        assert any(what in p for p in problems), (what, problems)

    nb = clean_notebook(_dirty_notebook())
    nbformat.write(nb, path)
    assert notebook_problems(path) == []
    outputs = nb.cells[0].outputs
    assert outputs[0].text.startswith("<site-packages>/torch/nn.py:3")
    assert "~/dsv3-edu/dsv3_edu/model/mla.py" in outputs[1].traceback[0]
    assert outputs[2].data["text/plain"] == "saved to <tmp>" and outputs[2].data["image/png"] == "iVBORw0KGgo="
    assert "widgets" not in nb.metadata and "execution" not in nb.cells[0].metadata


def test_problems_flag_outputs_in_exercises_and_huge_outputs(tmp_path):
    cell = new_code_cell("print('x')", execution_count=1)
    cell.outputs = [new_output("stream", name="stdout", text="x" * (MAX_OUTPUT_BYTES + 1))]
    path = tmp_path / "big.ipynb"
    nbformat.write(new_notebook(cells=[cell]), path)
    assert any("stream output" in p for p in notebook_problems(path))
    assert any("has outputs" in p for p in notebook_problems(path, allow_outputs=False))


def test_scrub_paths_leaves_urls_and_relative_paths_alone():
    text = "see https://github.com/root/tmp/x and data/tmp/file"
    assert scrub_paths(text) == text
    assert scrub_paths(str(ROOT / "dsv3_edu" / "config.py")) == "dsv3_edu/config.py"
