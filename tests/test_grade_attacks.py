"""Attacks on the grader, as an adversarial learner would try them (issue 13), run through the sandboxed path.

Each one must earn no undeserved point, lose no deserved one, and change no file outside the sandbox. The
gradient-dropping bugs and the 0-vs--inf mask are "attacks" by honest mistake: they must score 0 too.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from dsv3_edu.grade import grade_notebook, make_exercise
from dsv3_edu.grade.cells import grade_id, is_solution_cell
from dsv3_edu.grade.sandbox import bwrap_status

ROOT = Path(__file__).resolve().parents[1]
LB = ROOT / "solutions" / "04_load_balancing.ipynb"

_usable, _why = bwrap_status()
if not _usable and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the attack tests in the sandbox, but: {_why}")
pytestmark = pytest.mark.skipif(not _usable, reason=f"no working sandbox here ({_why}): the attacks would "
                                                    "really change files; CI installs bubblewrap")


def exercise(source_path: Path, solved: bool) -> nbformat.NotebookNode:
    """The generated exercise, with every stub replaced by the solution when ``solved``."""
    source = nbformat.read(source_path, as_version=4)
    ex = make_exercise(source, source_path.name)
    if solved:
        code = {grade_id(c): c.source for c in source.cells if is_solution_cell(c)}
        for c in ex.cells:
            if is_solution_cell(c):
                c.source = code[grade_id(c)]
    return ex


def cell_of(nb, gid):
    return next(c for c in nb.cells if grade_id(c) == gid)


def insert_after(nb, gid, code: str) -> None:
    nb.cells.insert(nb.cells.index(cell_of(nb, gid)) + 1, new_code_cell(code))


def tree_digest(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def scores(report) -> dict[str, float]:
    return {t.grade_id: t.score for t in report.tasks}


# --------------------------------------------------------------------------------------------- tampering, stubs
def test_tampering_from_a_wrong_notebook_earns_nothing_and_changes_nothing(tmp_path):
    marker = tmp_path / "outside" / "pwned.txt"
    marker.parent.mkdir()
    nb = exercise(LB, solved=False)
    # wrong answers everywhere (the tests compare them with references that the attacks below patch)
    cell_of(nb, "max_vio").source = "def max_vio(load):\n    return torch.zeros(load.shape[:-1])"
    cell_of(nb, "biased_topk").source = ("def biased_topk(scores, bias, top_k):\n"
                                         "    return torch.zeros(scores.shape[0], top_k), torch.zeros(scores.shape[0], top_k, dtype=torch.long)")
    cell_of(nb, "sign_rule_update").source = "def sign_rule_update(bias, load, gamma):\n    return bias"
    cell_of(nb, "seq_balance_loss").source = "def seq_balance_loss(scores, indices, top_k, alpha):\n    return torch.tensor(0.0)"
    attacks = f'''
import glob, json, os, pathlib, torch, numpy, numpy.testing
ROOT = {str(ROOT)!r}
# 1. read the answers: solutions/, fixtures, anything named solutions/ nearby
for f in glob.glob(ROOT + "/solutions/**/*", recursive=True) + glob.glob(ROOT + "/../**/solutions/04_*.ipynb", recursive=True):
    try:
        nb = json.loads(open(f).read())
        for c in nb["cells"]:
            if c.get("metadata", {{}}).get("nbgrader", {{}}).get("solution"):
                exec("".join(c["source"]))
    except Exception:
        pass
# 2. patch the checkers and the package's references
torch.testing.assert_close = lambda *a, **k: None
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
numpy.testing.assert_allclose = lambda *a, **k: None
import dsv3_edu.balance, dsv3_edu.model.moe
dsv3_edu.balance.max_violation = lambda load: torch.zeros(load.shape[:-1])
dsv3_edu.balance.sequence_balance_loss = lambda *a, **k: torch.tensor(0.0)
dsv3_edu.balance.bias_update = lambda b, *a, **k: b
dsv3_edu.model.moe.route = lambda s, b, k, *a, **kw: (torch.zeros(s.shape[0], k), torch.zeros(s.shape[0], k, dtype=torch.long))
# 3. write and delete outside the sandbox
for target in (ROOT + "/solutions/04_load_balancing.ipynb", ROOT + "/exercises/04_load_balancing.ipynb",
               ROOT + "/dsv3_edu/balance.py", {str(marker)!r}, os.path.expanduser("~/pwned.txt")):
    try:
        pathlib.Path(target).write_text("pwned")
    except OSError:
        pass
for target in (ROOT + "/exercises/04_load_balancing.ipynb", ROOT + "/dsv3_edu/balance.py"):
    try:
        os.remove(target)
    except OSError:
        pass
# 4. rewrite every later cell (the test cells of an in-kernel grader) to a no-op
get_ipython().input_transformers_cleanup.append(lambda lines: ["pass\\n"])
'''
    insert_after(nb, "setup", attacks)
    # a decoy: a "solutions/" folder next to the notebook whose tests always pass
    (tmp_path / "solutions").mkdir()
    decoy = nbformat.read(LB, as_version=4)
    for c in decoy.cells:
        if c.metadata.get("nbgrader", {}).get("grade"):
            c.source = "pass"
    nbformat.write(decoy, tmp_path / "solutions" / LB.name)
    (tmp_path / "exercises").mkdir()
    path = tmp_path / "exercises" / LB.name
    nbformat.write(nb, path)

    before = tree_digest(ROOT / "solutions", ROOT / "exercises", ROOT / "dsv3_edu")
    report = grade_notebook(path, timeout=30)
    assert report.sandbox == "bubblewrap"
    assert Path(report.source) == LB, "tests must come from the course's solutions/, not a folder nearby"
    assert report.score == 0 and report.max_score == 9, report.table()
    assert all(t.message for t in report.tasks), report.table()
    assert tree_digest(ROOT / "solutions", ROOT / "exercises", ROOT / "dsv3_edu") == before
    assert not marker.exists() and not (Path.home() / "pwned.txt").exists()


# --------------------------------------------------------------------------------------------- disruption, solved
def test_a_solved_notebook_survives_exits_kills_floods_and_hangs(tmp_path):
    nb = exercise(LB, solved=True)
    cell_of(nb, "setup").source += "\nimport math  # an extra import in the locked cell"
    # correct answers that an in-kernel grader used to zero: float64 where float is asked, a warning
    cell_of(nb, "max_vio").source = ("def max_vio(load):\n    load = load.double()\n"
                                     "    return (load.amax(-1) - load.mean(-1)) / load.mean(-1)")
    cell_of(nb, "biased_topk").source = "import warnings\n\n" + cell_of(nb, "biased_topk").source.replace(
        "    indices =", "    warnings.warn('just a warning')\n    indices =")
    # the gradient-dropping bug of task 4: the loss no longer trains the router
    sb = cell_of(nb, "seq_balance_loss")
    sb.source = sb.source.replace("P = (scores /", "scores = scores.detach()\n    P = (scores /")
    assert "detach" in sb.source
    insert_after(nb, "test_max_vio", "import os\nos._exit(3)")
    insert_after(nb, "test_biased_topk", "import os, signal\nfor pid in (os.getppid(), 1):\n    try:\n"
                                         "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
                                         "for pid in (-1, 0):  # everything else in the sandbox: nothing is there\n    try:\n"
                                         "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
                                         "os.kill(os.getpid(), signal.SIGKILL)")
    insert_after(nb, "test_sign_rule_update", "import os\nprint('y' * 50_000_000)\nos.write(1, b'x' * 50_000_000)")
    insert_after(nb, "sign_rule_update", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                          "while True:\n    pass")
    insert_after(nb, "max_vio", "import sys\nsys.exit(1)")
    path = tmp_path / LB.name
    nbformat.write(nb, path)

    report = grade_notebook(path, timeout=15)
    got = scores(report)
    assert got == {"test_max_vio": 2, "test_biased_topk": 2, "test_sign_rule_update": 2,
                   "test_seq_balance_loss": 0}, report.table() + "\n" + report.details()
    assert "gradient" in report.task("test_seq_balance_loss").message, report.task("test_seq_balance_loss")
    errors = "\n".join(report.errors)
    assert "exit code 3" in errors, errors
    assert "SIGKILL" in errors, errors
    assert "printed more than" in errors, errors
    assert "ran longer than 15 s" in errors, errors
    assert "SystemExit" in errors, errors
    assert any("locked cell 'setup'" in n for n in report.notes), report.notes


# --------------------------------------------------------------------------------------------- honest bugs
def test_gradient_and_mask_bugs_in_moe_score_zero(tmp_path):
    src = ROOT / "solutions" / "03_moe.ipynb"
    nb = exercise(src, solved=True)
    moe = cell_of(nb, "moe_forward")
    moe.source = moe.source.replace("    logits = flat.float()", "    with torch.no_grad():\n        logits = flat.float()")
    assert "no_grad" in moe.source
    glt = cell_of(nb, "group_limited_topk")
    assert 'float("-inf")' in glt.source
    glt.source = glt.source.replace('float("-inf")', "0.0")
    path = tmp_path / src.name
    nbformat.write(nb, path)
    report = grade_notebook(path, timeout=30)
    got = scores(report)
    assert got["test_sigmoid_gate_weights"] == 2 and got["test_max_violation"] == 2, report.table()
    assert got["test_group_limited_topk"] == 0 and "-inf" in report.task("test_group_limited_topk").message
    assert got["test_moe_forward"] == 0 and "gradient" in report.task("test_moe_forward").message, report.table()


def test_gradient_bugs_in_mtp_score_zero(tmp_path):
    src = ROOT / "solutions" / "05_mtp.ipynb"
    nb = exercise(src, solved=True)
    comb = cell_of(nb, "mtp_combine")
    comb.source = comb.source.replace("    both = torch.cat", "    with torch.no_grad():\n        both = torch.cat")
    loss = cell_of(nb, "mtp_total_loss")
    loss.source = loss.source.replace("    return main + lam / D * sum(mtp)",
                                      "    return torch.tensor(main.item() + lam / D * sum(m.item() for m in mtp))")
    assert "item()" in loss.source and "no_grad" in comb.source
    path = tmp_path / src.name
    nbformat.write(nb, path)
    report = grade_notebook(path, timeout=30)
    got = scores(report)
    assert got["test_mtp_slices"] == 2 and got["test_speculative"] == 2, report.table()
    assert got["test_mtp_combine"] == 0 and "gradient" in report.task("test_mtp_combine").message, report.table()
    assert got["test_mtp_total_loss"] == 0 and "gradient" in report.task("test_mtp_total_loss").message


# --------------------------------------------------------------------------------------------- classroom
@pytest.mark.filterwarnings("ignore:Object of type")  # nbgrader's own SQLAlchemy session warnings
def test_classroom_submission_cannot_touch_the_gradebook_or_other_submissions(tmp_path):
    from nbgrader.api import Gradebook

    from dsv3_edu.grade import autograde_course, make_nbgrader_course, nbgrader_api

    course = tmp_path / "course"
    make_nbgrader_course(course, ROOT / "solutions")
    result = nbgrader_api(course).generate_assignment("04_load_balancing")
    assert result["success"], result["log"]
    a = "04_load_balancing"
    bob_nb = exercise(LB, solved=True)
    alice_nb = exercise(LB, solved=False)
    insert_after(alice_nb, "setup", f'''
import pathlib, sqlite3
course = pathlib.Path({str(course)!r})
try:
    db = sqlite3.connect(course / "gradebook.db")
    db.execute("UPDATE grade SET auto_score = 99")
    db.commit()
except Exception:
    pass
for p in course.rglob("*.ipynb"):
    try:
        p.write_text("{{}}")
    except OSError:
        pass
''')
    for student, nb in (("alice", alice_nb), ("bob", bob_nb)):
        folder = course / "submitted" / student / a
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{a}.ipynb")
    (course / "submitted" / "carol" / a).mkdir(parents=True)
    (course / "submitted" / "carol" / a / f"{a}.ipynb").write_text("not a notebook")
    bob_before = (course / "submitted" / "bob" / a / f"{a}.ipynb").read_bytes()

    rows = dict(autograde_course(course, a, timeout=30))
    assert rows["alice"] == "0 / 9" and rows["bob"] == "9 / 9", rows
    assert "FAILED" in rows["carol"], rows
    assert (course / "submitted" / "bob" / a / f"{a}.ipynb").read_bytes() == bob_before
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        assert gb.find_submission(a, "alice").score == 0
        assert gb.find_submission(a, "bob").score == 9
        carol = gb.find_submission(a, "carol")
        assert carol.needs_manual_grade, "a failed autograde is recorded as failed, not as 0"
    feedback = (course / "feedback" / "bob" / a / f"{a}.html").read_text()
    assert "9 / 9" in feedback and "HIDDEN" not in feedback


def test_source_integrity_errors_are_clear(tmp_path):
    nb = exercise(LB, solved=True)
    path = tmp_path / LB.name
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="solutions/ folder"):
        grade_notebook(path, source=path)                    # --source pointing at the learner's own notebook
    other = nbformat.v4.new_notebook(cells=[new_code_cell("x = 1")])
    nbformat.write(other, tmp_path / "mine.ipynb")
    with pytest.raises(ValueError, match="shares no graded cell"):
        grade_notebook(tmp_path / "mine.ipynb", source=LB)
    shutil.rmtree(tmp_path / "solutions", ignore_errors=True)
