"""Self-study grading: run a learner's exercise notebook in a fresh kernel against the source's tests.

Honesty rules (see docs/exercises.md):
- The learner's test cells never count. The notebook that runs is rebuilt from the learner's cells in their
  order, with every test cell (and read-only cell) taken from solutions/<name>, hidden tests included.
  A test cell the learner edited is put back; one they deleted is put back after the cell it followed.
- Points come from the source only; a learner cell that claims to be a test cell is plain learner code.
- Each cell has a timeout: learner code that hangs is interrupted and that task scores 0. Errors do not
  stop the run, so one broken task does not hide the others' scores. If the kernel cannot be interrupted
  or dies, the tasks after that point score 0 with a message saying so.
- A test cell scores like in nbgrader (``nbgrader.utils.determine_grade``): 0 if it raises or writes to
  stderr, its points otherwise (or the partial credit it returns as its last value).
"""
from __future__ import annotations

import copy
import logging
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from nbformat import NotebookNode

from .cells import (autograded_cells, find_source, grade_id, is_readonly_cell, is_solution_cell, is_test_cell,
                    points, read_notebook)
from .execute import kernel_env

TIMEOUT_ENAME = "CellTimeout"
SETUP_TIMEOUT = 300  # seconds for the source's read-only cells (trusted setup: imports can be slow on a busy machine)
_ANSI = re.compile(r"\x1b\[[\d;]*[A-Za-z]")


@dataclass
class TaskResult:
    grade_id: str          # the test cell's nbgrader grade_id
    points: float          # what the task is worth
    score: float           # what the learner got
    status: str            # "passed", "failed", "timeout" or "not run"
    message: str = ""      # why it failed: the failing assertion's message, a timeout, ...


@dataclass
class GradeReport:
    notebook: str
    source: str
    tasks: list[TaskResult]
    errors: list[str] = field(default_factory=list)   # errors in non-test cells: they often explain a failure
    seconds: float = 0.0
    executed: NotebookNode | None = field(default=None, repr=False)  # the rebuilt notebook, with outputs

    @property
    def score(self) -> float:
        return sum(t.score for t in self.tasks)

    @property
    def max_score(self) -> float:
        return sum(t.points for t in self.tasks)

    def task(self, gid: str) -> TaskResult:
        for t in self.tasks:
            if t.grade_id == gid:
                return t
        raise KeyError(f"no task {gid!r}; tasks are {[t.grade_id for t in self.tasks]}")

    def table(self, width: int = 80) -> str:
        """The per-task score table with a total line, as printed by ``python -m dsv3_edu.grade``."""
        w = max([len("task")] + [len(t.grade_id) for t in self.tasks])
        lines = [f"{'task':<{w}}  points  score  message"]
        for t in self.tasks:
            msg = _one_line(t.message, width)
            lines.append(f"{t.grade_id:<{w}}  {_num(t.points):>6}  {_num(t.score):>5}  {msg}".rstrip())
        pct = 100 * self.score / self.max_score if self.max_score else 0.0
        lines.append(f"{'TOTAL':<{w}}  {_num(self.max_score):>6}  {_num(self.score):>5}  ({pct:.0f}%)")
        return "\n".join(lines)

    def details(self, max_lines: int = 12) -> str:
        """The full messages of the failed tasks, and errors raised in the other cells."""
        out = []
        for t in self.tasks:
            if t.status != "passed" and t.message and _one_line(t.message, 80) != t.message:  # cut in the table
                body = "\n".join(("    " + ln).rstrip() for ln in t.message.splitlines()[:max_lines])
                out.append(f"{t.grade_id} ({t.status}):\n{body}")
        if self.errors:
            out.append("errors in other cells (they may explain the failures above):")
            out += ["    " + _one_line(e, 100) for e in self.errors]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _num(x: float) -> str:
    return f"{x:g}"


def _one_line(text: str, width: int) -> str:
    text = " ".join(ln.strip() for ln in text.splitlines() if ln.strip())
    return text if len(text) <= width else text[:width - 3] + "..."


# ---------------------------------------------------------------------------------------------------- rebuild
def _key(cell: NotebookNode) -> tuple[str, str] | None:
    """How a cell is found again in another version of the notebook: its grade_id, else its cell id."""
    gid = grade_id(cell)
    if gid:
        return ("gid", gid)
    return ("id", cell["id"]) if cell.get("id") else None


def rebuild_for_grading(learner: NotebookNode, source: NotebookNode) -> tuple[NotebookNode, dict[str, int]]:
    """The notebook that actually runs, and the index of each source test cell in it.

    Learner cells are kept in the learner's order. A learner cell that is (or was: same grade_id or same cell
    id) a test or read-only cell of the source is replaced by the source's version; one such cell per
    grade_id, extra copies are dropped. Source test/read-only cells missing from the learner's notebook are
    inserted after the nearest earlier source cell that is present (else before the nearest later one, else
    at the end). Cells without a source counterpart lose their nbgrader metadata: they are learner code.
    """
    protected = [c for c in source.cells if is_test_cell(c) or is_readonly_cell(c)]
    protected_ids = {id(c) for c in protected}
    by_key = {}
    for c in protected:
        by_key[("gid", grade_id(c))] = c
        if c.get("id"):
            by_key[("id", c["id"])] = c

    cells: list[NotebookNode] = []
    placed: set[str] = set()
    for cell in learner.cells:
        src = by_key.get(("gid", grade_id(cell))) if grade_id(cell) else None
        src = src or (by_key.get(("id", cell["id"])) if cell.get("id") else None)
        if src is not None:
            if grade_id(src) not in placed:
                cells.append(copy.deepcopy(src))
                placed.add(grade_id(src))
            continue
        cell = copy.deepcopy(cell)
        if not is_solution_cell(cell):
            cell.get("metadata", {}).pop("nbgrader", None)
        cells.append(cell)

    def position(key) -> int | None:
        if key is None:  # a cell without grade_id or cell id (nbformat < 4.5) cannot be found again
            return None
        for j, c in enumerate(cells):
            if _key(c) == key:
                return j
        return None

    src_cells = source.cells
    for i, cell in enumerate(src_cells):
        if id(cell) not in protected_ids or grade_id(cell) in placed:
            continue
        at = None
        for prev in reversed(src_cells[:i]):
            j = position(_key(prev))
            if j is not None:
                at = j + 1
                break
        if at is None:
            for nxt in src_cells[i + 1:]:
                j = position(_key(nxt))
                if j is not None:
                    at = j
                    break
        cells.insert(len(cells) if at is None else at, copy.deepcopy(cell))
        placed.add(grade_id(cell))

    for c in cells:  # nothing from an earlier run may be mistaken for this run's output
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nb = copy.deepcopy(source)
    nb.cells = cells
    index = {grade_id(c): j for j, c in enumerate(cells) if is_test_cell(c)}
    return nb, index


# ---------------------------------------------------------------------------------------------------- execute
def _error_message(content: dict, cell: NotebookNode) -> str:
    """'AssertionError: message' from an execute reply; the failing line when the exception has no message."""
    ename, evalue = content.get("ename", "Error"), str(content.get("evalue", "")).strip()
    if ename == "NotImplementedError" and not evalue:
        return "NotImplementedError: not done yet (replace `raise NotImplementedError()`)"
    if evalue:
        return f"{ename}: {evalue}"
    tb = _ANSI.sub("", "\n".join(content.get("traceback", [])))
    m = re.search(r"line (\d+)", tb)
    lines = cell.source.splitlines()
    if m and 0 < int(m.group(1)) <= len(lines):
        return f"{ename} at `{lines[int(m.group(1)) - 1].strip()}`"
    return ename


async def _kernel_responds(kc, seconds: float) -> bool:
    """True if the kernel answers a kernel_info request within ``seconds`` (it is not stuck in a cell)."""
    msg_id = kc.kernel_info()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await kc.shell_channel.get_msg(timeout=left)
        except Exception:  # queue.Empty on timeout
            return False
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return True
    return False


async def _run_cells(nb: NotebookNode, timeout: float, kernel_name: str, cwd: Path, env: dict) -> dict[int, dict]:
    """Execute code cells one by one; {cell index: execute reply content, or {"status": "not run", ...}}."""
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    replies: dict[int, dict] = {}
    quiet = logging.getLogger("dsv3_edu.grade.kernel")
    quiet.setLevel(logging.CRITICAL)

    def on_executed(cell, cell_index, execute_reply):
        replies[cell_index] = execute_reply["content"]

    def cell_timeout(cell) -> int:
        return max(int(timeout), SETUP_TIMEOUT) if is_readonly_cell(cell) else int(timeout)

    client = NotebookClient(
        nb, timeout=int(timeout), timeout_func=cell_timeout, kernel_name=kernel_name, allow_errors=True,
        interrupt_on_timeout=True,
        error_on_timeout={"ename": TIMEOUT_ENAME, "traceback": [],
                          "evalue": f"the cell ran longer than {int(timeout)} s and was stopped"},
        on_cell_executed=on_executed, shutdown_kernel="immediate", log=quiet,
        resources={"metadata": {"path": str(cwd)}})
    stuck = None
    # the kernel process's own stderr (ZMQ warnings) is noise here; cell output arrives via IOPub
    async with client.async_setup_kernel(env=env, stderr=subprocess.DEVNULL):
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            if stuck:
                replies[i] = {"status": "not run", "evalue": stuck}
                continue
            try:
                await client.async_execute_cell(cell, i, execution_count=i + 1)
            except DeadKernelError:
                replies[i] = {"status": "error", "ename": "DeadKernelError", "evalue": "the kernel died in this cell"}
                stuck = f"not run: the kernel died in cell {i}"
                continue
            if replies.get(i, {}).get("ename") == TIMEOUT_ENAME and not await _kernel_responds(client.kc, 10):
                stuck = f"not run: the kernel stayed stuck in cell {i} after the timeout"
    return replies


def grade_notebook(path: str | Path, source: str | Path | None = None, timeout: float = 60.0,
                   kernel_name: str = "python3", cwd: str | Path | None = None) -> GradeReport:
    """Grade a learner's notebook against its source in solutions/ (found by name when not given).

    timeout: seconds per cell (whole seconds; the source's read-only setup cells get at least SETUP_TIMEOUT).
    cwd: the kernel's working folder (default: the notebook's folder).
    Raises ValueError when the notebook or its source cannot be read or the source has no test cells.
    """
    from jupyter_core.utils import run_sync
    from nbgrader.utils import determine_grade

    path = Path(path)
    learner = read_notebook(path)
    source = Path(source) if source is not None else find_source(path, learner)
    src_nb = read_notebook(source)
    if not autograded_cells(src_nb):
        raise ValueError(f"{source} has no autograded test cells: it is not an exercise notebook")
    if timeout < 1:
        raise ValueError(f"timeout must be at least 1 second per cell, got {timeout}")

    nb, test_index = rebuild_for_grading(learner, src_nb)
    t0 = time.perf_counter()
    cwd = Path(cwd) if cwd is not None else path.resolve().parent
    replies = run_sync(_run_cells)(nb, timeout, kernel_name, cwd, kernel_env())
    seconds = time.perf_counter() - t0

    tasks = []
    for gid, i in test_index.items():
        cell, reply = nb.cells[i], replies.get(i, {"status": "not run", "evalue": "not run"})
        status, pts = reply.get("status"), points(nb.cells[i])
        if status == "not run":
            tasks.append(TaskResult(gid, pts, 0.0, "not run", reply["evalue"]))
        elif reply.get("ename") == TIMEOUT_ENAME:
            tasks.append(TaskResult(gid, pts, 0.0, "timeout", f"timed out: {reply['evalue']}"))
        elif status == "error":
            tasks.append(TaskResult(gid, pts, 0.0, "failed", _error_message(reply, cell)))
        elif status != "ok":
            tasks.append(TaskResult(gid, pts, 0.0, "failed", f"the kernel answered {status!r}"))
        else:
            score, _ = determine_grade(cell)
            stderr = "".join(o.get("text", "") for o in cell.outputs
                             if o.get("output_type") == "stream" and o.get("name") == "stderr")
            msg = f"the test wrote to stderr, which counts as a failure: {stderr.strip()}" if stderr else ""
            if not stderr and score < pts:
                msg = f"partial credit: the test returned {score:g} of {pts:g}"
            tasks.append(TaskResult(gid, pts, float(score), "passed" if score >= pts else "failed", msg))

    errors = []
    tests = set(test_index.values())
    for i, reply in sorted(replies.items()):
        if i not in tests and reply.get("status") == "error":
            label = grade_id(nb.cells[i]) or (nb.cells[i].source.strip().splitlines() or [""])[0][:40]
            errors.append(f"cell {i} ({label}): {_error_message(reply, nb.cells[i])}")
    return GradeReport(str(path), str(source), tasks, errors, seconds, nb)
