"""The autograder: exercises/ generated from solutions/, honest grading, and nbgrader's classroom workflow."""
from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from dsv3_edu.grade import (
    check_exercises,
    generate_exercises,
    grade_notebook,
    make_exercise,
    make_nbgrader_course,
    nbgrader_api,
    rebuild_for_grading,
)
from dsv3_edu.grade.__main__ import main
from dsv3_edu.grade.cells import (
    autograded_cells,
    grade_id,
    is_solution_cell,
    is_test_cell,
    solution_notebooks,
)
from dsv3_edu.grade.generate import CHECK_CODE

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = solution_notebooks(ROOT / "solutions")
MLA = ROOT / "solutions" / "02_mla.ipynb"


def solved(source: nbformat.NotebookNode, name: str = "02_mla.ipynb") -> nbformat.NotebookNode:
    """The exercise with every stub replaced by the source's solution code: what a perfect learner hands in."""
    ex = make_exercise(source, name)
    code = {grade_id(c): c.source for c in source.cells if is_solution_cell(c)}
    for c in ex.cells:
        if is_solution_cell(c):
            c.source = code[grade_id(c)]
    return ex


def write(nb, folder: Path, name: str = "02_mla.ipynb") -> Path:
    path = folder / name
    nbformat.write(nb, path)
    return path


def cell_of(nb, gid):
    return next(c for c in nb.cells if grade_id(c) == gid)


# ----------------------------------------------------------------------------------------- generation (no kernel)
def test_exercises_in_sync_with_solutions():
    assert SOLUTIONS, "solutions/ holds no exercise notebook"
    assert check_exercises(ROOT / "solutions", ROOT / "exercises") == []


@pytest.mark.parametrize("source_path", SOLUTIONS, ids=lambda p: p.stem)
def test_exercise_is_the_stub_version_of_its_source(source_path):
    source = nbformat.read(source_path, as_version=4)
    ex = make_exercise(source, source_path.name)
    text = nbformat.writes(ex)
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in ex.cells if c.cell_type == "code")
    for c in ex.cells:
        if is_solution_cell(c) and c.cell_type == "code":
            assert "raise NotImplementedError()" in c.source, f"{grade_id(c)} keeps no stub"
    src_tests = {grade_id(c): c.metadata.nbgrader.points for c in autograded_cells(source)}
    ex_tests = {grade_id(c): c.metadata.nbgrader.points for c in autograded_cells(ex)}
    assert ex_tests == src_tests and all(p > 0 for p in src_tests.values())
    assert all(c.metadata.get("editable") is False for c in autograded_cells(ex)), "test cells must be locked"
    assert ex.metadata["dsv3_edu"]["exercise_source"] == f"solutions/{source_path.name}"


MLA_TASKS = ["test_rms_norm", "test_apply_rope", "test_kv_cache_bytes", "test_split_wkv_b", "test_absorbed_scores"]
MLA_POINTS = 12


def test_mla_source_has_five_tasks_with_hidden_tests():
    source = nbformat.read(MLA, as_version=4)
    tests = autograded_cells(source)
    assert [grade_id(c) for c in tests] == MLA_TASKS
    assert all("### BEGIN HIDDEN TESTS" in c.source for c in tests)
    assert "70_272" in cell_of(source, "test_kv_cache_bytes").source


def test_sync_check_detects_every_kind_of_drift(tmp_path):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    shutil.copy(MLA, sol / MLA.name)
    assert [p.name for p in generate_exercises(sol, ex, fixtures=False)] == [MLA.name]
    assert check_exercises(sol, ex) == []
    assert generate_exercises(sol, ex, fixtures=False) == []  # up to date: nothing rewritten
    from dsv3_edu.grade.probe import FIXTURE_VERSION, fixture_path, save_fixture
    save_fixture({"version": FIXTURE_VERSION, "digest": "stale"}, fixture_path(sol / MLA.name))
    assert any("fixtures/02_mla.pt: out of date" in p for p in check_exercises(sol, ex))
    fixture_path(sol / MLA.name).unlink()  # a missing fixture is no problem: it is recorded on first use
    assert check_exercises(sol, ex) == []

    nb = nbformat.read(sol / MLA.name, as_version=4)
    cell_of(nb, "test_kv_cache_bytes").source += "\nassert True  # a new hidden check"
    nbformat.write(nb, sol / MLA.name)
    assert any("out of date" in p for p in check_exercises(sol, ex))

    generate_exercises(sol, ex, fixtures=False)
    shutil.copy(ex / MLA.name, ex / "99_orphan.ipynb")
    (ex / MLA.name).unlink()
    problems = check_exercises(sol, ex)
    assert any("missing" in p for p in problems) and any("99_orphan" in p for p in problems)
    assert main(["generate", "--check", "--solutions", str(sol), "--exercises", str(ex)]) == 1


def test_make_exercise_rejects_a_notebook_without_tests():
    with pytest.raises(ValueError, match="no autograded test cells"):
        make_exercise(new_notebook(cells=[new_code_cell("x = 1")]), "plain.ipynb")


# ----------------------------------------------------------------------------------------- rebuild (no kernel)
def _nbg(cell, gid, **flags):
    cell.metadata["nbgrader"] = {"grade_id": gid, "grade": False, "solution": False, "locked": False,
                                 "schema_version": 3, **flags}
    return cell


def _toy_source():
    cells = [
        _nbg(new_code_cell("import math"), "setup", locked=True),
        _nbg(new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"), "f", solution=True),
        _nbg(new_code_cell("assert f() == 1"), "test_f", grade=True, locked=True, points=1),
        new_markdown_cell("next task"),
        _nbg(new_code_cell("def g():\n    ### BEGIN SOLUTION\n    return 2\n    ### END SOLUTION"), "g", solution=True),
        _nbg(new_code_cell("assert g() == 2"), "test_g", grade=True, locked=True, points=2),
    ]
    return new_notebook(cells=cells)


def test_rebuild_puts_back_edited_and_deleted_tests_and_keeps_learner_cells():
    source = _toy_source()
    learner = copy.deepcopy(make_exercise(source))
    learner.cells[0].source = "import os  # edited read-only cell"
    learner.cells[2].source = "pass"                                    # edited test
    learner.cells.insert(2, new_code_cell("helper = 3"))                # learner's own cell
    del learner.cells[6]                                                 # test_g deleted
    fake = _nbg(new_code_cell("pass"), "my_test", grade=True, locked=True, points=100)
    learner.cells.append(fake)
    learner.cells.append(copy.deepcopy(learner.cells[3]))               # a duplicated test cell

    nb, index = rebuild_for_grading(learner, source)
    sources = [c.source for c in nb.cells]
    assert sources[0] == "import math", "read-only cells come from the source"
    assert sources[2] == "helper = 3", "the learner's own cells stay, in order"
    assert sources[3] == "assert f() == 1", "an edited test cell is put back in place"
    assert sources.count("assert f() == 1") == 1, "a duplicated test cell runs once"
    assert index == {"test_f": 3, "test_g": 6}
    assert sources[5].startswith("def g") and sources[6] == "assert g() == 2", "a deleted test goes after its task"
    assert not any(grade_id(c) == "my_test" for c in nb.cells), "a learner cell cannot become a graded test"
    assert [grade_id(c) for c in nb.cells if is_test_cell(c)] == ["test_f", "test_g"]


def test_rebuild_finds_a_test_cell_whose_metadata_was_stripped_by_its_cell_id():
    source = _toy_source()
    learner = make_exercise(source)
    learner.cells[2].metadata.pop("nbgrader")
    learner.cells[2].source = "pass"
    nb, index = rebuild_for_grading(learner, source)
    assert nb.cells[index["test_f"]].source == "assert f() == 1" and index["test_f"] == 2
    assert len(nb.cells) == len(source.cells)


# ----------------------------------------------------------------------------------------- grading (kernels)
@pytest.mark.parametrize("source_path", SOLUTIONS, ids=lambda p: p.stem)
def test_stub_scores_zero_and_solution_scores_full_marks(source_path, tmp_path):
    source = nbformat.read(source_path, as_version=4)
    stub = write(make_exercise(source, source_path.name), tmp_path, source_path.name)
    report = grade_notebook(stub, source=source_path)
    assert report.max_score > 0 and report.score == 0
    for t in report.tasks:
        assert t.score == 0 and t.message, f"{t.grade_id}: the stub passes it: a test that cannot fail?"

    report = grade_notebook(source_path)  # the solution, graded against itself
    assert [(t.grade_id, t.score) for t in report.tasks] == [(t.grade_id, t.points) for t in report.tasks], \
        report.table()


def test_cheating_on_test_cells_still_scores_zero(tmp_path):
    source = nbformat.read(MLA, as_version=4)
    nb = make_exercise(source, MLA.name)
    cell_of(nb, "test_rms_norm").source = "pass"                         # edited test
    nb.cells.remove(cell_of(nb, "test_apply_rope"))                     # deleted test
    kv = cell_of(nb, "test_kv_cache_bytes")
    kv.metadata.pop("nbgrader")                                          # disguised as an ordinary cell
    kv.source = "pass"
    nb.cells.append(_nbg(new_code_cell("pass"), "free_points", grade=True, locked=True, points=100))
    report = grade_notebook(write(nb, tmp_path), source=MLA)
    assert report.score == 0 and report.max_score == MLA_POINTS, report.table()
    assert [t.grade_id for t in report.tasks] == MLA_TASKS


def test_hang_and_error_in_one_task_do_not_hide_the_others(tmp_path):
    nb = solved(nbformat.read(MLA, as_version=4))
    cell_of(nb, "rms_norm").source = "def rms_norm(x, weight, eps=1e-6):\n    while True:\n        pass"
    cell_of(nb, "apply_rope").source = "def apply_rope(x, freqs_cis):\n    raise ValueError('boom: not yet')"
    report = grade_notebook(write(nb, tmp_path), source=MLA, timeout=10)
    rms, rope, kv = (report.task(g) for g in ("test_rms_norm", "test_apply_rope", "test_kv_cache_bytes"))
    assert (rms.status, rms.score) == ("timeout", 0) and "10 s" in rms.message
    assert (rope.status, rope.score) == ("failed", 0) and "ValueError: boom: not yet" in rope.message
    assert (kv.status, kv.score) == ("passed", 2)
    assert report.score == MLA_POINTS - 5   # every task but the two broken ones


def test_cli_prints_the_table_hidden_tests_count_and_deleted_tests_come_back(tmp_path, capsys):
    nb = solved(nbformat.read(MLA, as_version=4))
    nb.cells = [c for c in nb.cells if not is_test_cell(c)]  # deleting the tests does not stop them running
    # eps outside the square root: passes the public tests, fails a hidden one
    cell_of(nb, "rms_norm").source = (
        "def rms_norm(x, weight, eps=1e-6):\n"
        "    return weight * (x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps))")
    path = write(nb, tmp_path, "my_copy.ipynb")  # renamed copy: the source is found from the metadata
    assert main([str(path), "--timeout", "60"]) == 0
    out = capsys.readouterr().out
    assert "test_rms_norm              2      0  AssertionError: eps must be added" in out, out
    assert "test_apply_rope            3      3" in out and "TOTAL                     12     10" in out, out


def test_cli_usage_errors_exit_nonzero_with_a_message(tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "dsv3_edu.grade", str(tmp_path / "missing.ipynb")],
                       capture_output=True, text=True, cwd=tmp_path, check=False)
    assert r.returncode == 2 and "no such notebook" in r.stderr

    (tmp_path / "junk.ipynb").write_text("not json")
    assert main([str(tmp_path / "junk.ipynb")]) == 2
    assert "not a readable Jupyter notebook" in capsys.readouterr().err

    plain = write(new_notebook(cells=[new_code_cell("x = 1")]), tmp_path, "plain.ipynb")
    assert main([str(plain)]) == 2
    assert "cannot find the source" in capsys.readouterr().err
    assert main([str(plain), "--source", str(plain)]) == 2
    assert "solutions/ folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- nbgrader (classroom)
@pytest.mark.filterwarnings("ignore:Object of type")  # nbgrader's own SQLAlchemy session warnings
def test_nbgrader_workflow_on_the_same_sources(tmp_path):
    """generate_assignment -> submissions -> autograde -> gradebook, with nbgrader itself."""
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    assert "02_mla" in make_nbgrader_course(course, ROOT / "solutions")
    assert (course / "source" / "02_mla" / "02_mla.ipynb").is_file()
    api = nbgrader_api(course)
    result = api.generate_assignment("02_mla")
    assert result["success"], result["log"] + str(result.get("error"))

    release = nbformat.read(course / "release" / "02_mla" / "02_mla.ipynb", as_version=4)
    ours = nbformat.read(ROOT / "exercises" / "02_mla.ipynb", as_version=4)
    ours_cells = [c for c in ours.cells if not c.metadata.get("dsv3_edu", {}).get("check")]
    assert [c.source for c in release.cells] == [c.source for c in ours_cells], "nbgrader's release != exercises/"
    assert ours.cells[-1].source == CHECK_CODE, "the check cell comes last in the exercise"

    source = nbformat.read(MLA, as_version=4)
    submissions = {"alice": solved(source), "bob": release}
    for student, nb in submissions.items():
        folder = course / "submitted" / student / "02_mla"
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / "02_mla.ipynb")
        result = api.autograde("02_mla", student)
        assert result["success"], result["log"] + str(result.get("error"))

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        assert gb.find_submission("02_mla", "alice").score == MLA_POINTS
        assert gb.find_submission("02_mla", "bob").score == 0
        assert gb.find_submission("02_mla", "alice").max_score == MLA_POINTS


# ----------------------------------------------------------------------------------------- CLI, copies, check cell
def test_cli_finds_a_bare_file_name_from_any_folder(tmp_path, monkeypatch):
    from dsv3_edu.grade.cells import resolve_notebook

    monkeypatch.chdir(tmp_path)
    assert resolve_notebook("02_mla.ipynb") == ROOT / "exercises" / "02_mla.ipynb"
    monkeypatch.chdir(ROOT / "exercises")
    assert resolve_notebook("02_mla.ipynb").resolve() == ROOT / "exercises" / "02_mla.ipynb"
    with pytest.raises(ValueError, match="no such notebook"):
        resolve_notebook("99_nothing.ipynb")


def test_every_option_of_every_command_has_a_help_text():
    from dsv3_edu.grade.__main__ import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subs.choices.items():
        assert sub.description, f"{name} has no description"
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help text"


def test_generate_keeps_a_learners_work_and_ignores_jupyterlab_copies(tmp_path):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    shutil.copy(MLA, sol / MLA.name)
    generate_exercises(sol, ex, fixtures=False)
    worked = solved(nbformat.read(MLA, as_version=4))
    nbformat.write(worked, ex / MLA.name)
    shutil.copy(ex / MLA.name, ex / "02_mla-Copy1.ipynb")          # JupyterLab's Duplicate
    problems = check_exercises(sol, ex)
    assert not any("Copy1" in p for p in problems), problems
    nb = nbformat.read(sol / MLA.name, as_version=4)
    cell_of(nb, "test_rms_norm").source += "\nassert True"
    nbformat.write(nb, sol / MLA.name)
    with pytest.raises(ValueError, match="--force"):
        generate_exercises(sol, ex, fixtures=False)
    assert nbformat.read(ex / MLA.name, as_version=4).cells == worked.cells, "the learner's work was overwritten"
    generate_exercises(sol, ex, force=True, fixtures=False)
    assert check_exercises(sol, ex) == []


def test_check_cell_grades_the_notebook_it_runs_in(tmp_path):
    """The exercise's last cell, run in a real kernel that knows its notebook (as JupyterLab tells it)."""
    import os

    from nbclient import NotebookClient

    from dsv3_edu.grade import kernel_env

    src = ROOT / "solutions" / "04_load_balancing.ipynb"
    nb = solved(nbformat.read(src, as_version=4), src.name)
    path = write(nb, tmp_path, src.name)
    env = kernel_env()
    env["JPY_SESSION_NAME"] = str(path)
    run = nbformat.read(path, as_version=4)
    NotebookClient(run, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute(env=env)
    html = "".join(o.get("data", {}).get("text/html", "") for o in run.cells[-1].outputs)
    assert "Score 9 / 9" in html and "test_seq_balance_loss" in html, run.cells[-1].outputs
    assert os.environ.get("DSV3_GRADE_WORKER") != "1"
