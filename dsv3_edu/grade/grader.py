"""Self-study grading: the learner's code runs in a sandboxed worker, the checks run here on the data it returns.

Honesty rules (see docs/exercises.md, "How grading works"):
- The learner's test cells never count. The notebook that runs is rebuilt from the learner's cells in their
  order, with every test cell (and read-only cell) taken from solutions/<name>, hidden tests included.
  A test cell the learner edited is put back; one they deleted is put back after the cell it followed.
- Points come from the source only; a learner cell that claims to be a test cell is plain learner code.
- Learner code never runs in this process: a worker (worker.py) runs the learner's cells in a sandbox
  (sandbox.py) and, where a test cell stands, evaluates the learner's functions on the probes recorded from
  the solution (probe.py). Here, the source's test cell runs on those results (values and gradients), so
  patching torch, numpy, IPython or the package inside the worker changes nothing.
- Each step has a time limit; a cell that hangs, kills its process or floods its output is charged to that
  cell, and the worker restarts after it, so one broken task does not hide the others' scores.
- A warning does not fail a task: only a failed check does.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

from nbformat import NotebookNode

from .cells import (
    SOURCE_KEY,
    autograded_cells,
    check_source,
    find_source,
    grade_id,
    is_readonly_cell,
    is_solution_cell,
    is_test_cell,
    points,
    read_notebook,
)

SETUP_TIMEOUT = 300  # seconds for the source's read-only cells (trusted setup: imports can be slow on a busy machine)


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
    notes: list[str] = field(default_factory=list)   # e.g. an edited locked cell that was not used
    sandbox: str = ""                                 # "bubblewrap" or "unsandboxed: <why>"

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
        if self.notes:
            out += ["note: " + n for n in self.notes]
        if self.errors:
            out.append("errors in other cells (they may explain the failures above):")
            out += ["    " + _one_line(e, 100) for e in self.errors]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()

    def html(self) -> str:
        """The score table as HTML (the check cell shows it), with each failing check's full message."""
        from html import escape

        colour = {"passed": "#1a7f37", "failed": "#cf222e", "timeout": "#9a6700", "not run": "#6e7781"}
        rows = []
        for t in self.tasks:
            msg = escape(t.message) if t.message else ""
            msg = f"<pre style='white-space:pre-wrap;margin:0'>{msg}</pre>" if msg else ""
            rows.append(f"<tr><td><code>{escape(t.grade_id)}</code></td><td>{_num(t.points)}</td>"
                        f"<td style='color:{colour.get(t.status, '#000')};font-weight:bold'>{_num(t.score)}</td>"
                        f"<td>{escape(t.status)}</td><td style='text-align:left'>{msg}</td></tr>")
        pct = 100 * self.score / self.max_score if self.max_score else 0.0
        rows.append(f"<tr><td><b>TOTAL</b></td><td><b>{_num(self.max_score)}</b></td>"
                    f"<td><b>{_num(self.score)}</b></td><td>{pct:.0f}%</td><td></td></tr>")
        extra = "".join(f"<li>{escape(e)}</li>" for e in self.notes + self.errors)
        extra = f"<p>Also:</p><ul>{extra}</ul>" if extra else ""
        mode = "" if self.sandbox == "bubblewrap" else \
            f"<p style='color:#9a6700'>Ran without a sandbox ({escape(self.sandbox)}).</p>"
        return ("<div class='dsv3-grade-report'>"
                f"<p><b>Score {_num(self.score)} / {_num(self.max_score)}</b> ({self.seconds:.0f} s)</p>"
                "<table><thead><tr><th>task</th><th>points</th><th>score</th><th>status</th>"
                "<th style='text-align:left'>message</th></tr></thead><tbody>" + "".join(rows) +
                "</tbody></table>" + extra + mode + "</div>")

    def _repr_html_(self) -> str:
        return self.html()


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
        if cell.get("metadata", {}).get(SOURCE_KEY, {}).get("check"):
            continue  # the check cell grades the notebook: it has no place in the graded run
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


# ---------------------------------------------------------------------------------------------------- grade
def _message(e: BaseException, code: str) -> str:
    """'AssertionError: message' for a failed check; the failing line when the exception has no message."""
    import traceback

    ename = type(e).__name__
    try:
        evalue = str(e).strip()
    except Exception:  # noqa: BLE001 (any __str__ may fail)
        evalue = ""
    if ename == "NotImplementedError" and not evalue:
        return "NotImplementedError: not done yet (replace `raise NotImplementedError()`)"
    if evalue:
        return f"{ename}: {evalue}"
    lines = code.splitlines()
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if frame.filename == "<cell>" and frame.lineno and 0 < frame.lineno <= len(lines):
            return f"{ename} at `{lines[frame.lineno - 1].strip()}`"
    return ename


def _source_checks(learner: NotebookNode, src_nb: NotebookNode, path: Path) -> list[str]:
    """Clear errors for a notebook that is not a version of the source; notes on edited locked cells."""
    src_keys = {_key(c) for c in src_nb.cells if is_solution_cell(c) or is_test_cell(c)} - {None}
    if not any(_key(c) in src_keys for c in learner.cells):
        raise ValueError(f"{path.name} shares no graded cell (grade_id or cell id) with its source: it is not a "
                         "version of this exercise; name the right source with --source, or start again from "
                         "exercises/")
    notes = []
    src_ro = {grade_id(c): c for c in src_nb.cells if is_readonly_cell(c)}
    for c in learner.cells:
        src = src_ro.get(grade_id(c)) if grade_id(c) else None
        if src is not None and c.source.strip() != src.source.strip():
            notes.append(f"you edited the locked cell {grade_id(c)!r}: the grader ran the original instead "
                         "(put your own imports in a cell of your own)")
    return notes


def _plan(nb: NotebookNode, timeout: float) -> tuple[list[dict], list[float]]:
    steps, limits = [], []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        if is_test_cell(cell):
            steps.append({"kind": "probe", "task": grade_id(cell), "cell": i})
        else:
            steps.append({"kind": "cell", "code": cell.source, "cell": i})
        limits.append(max(timeout, SETUP_TIMEOUT) if is_readonly_cell(cell) else timeout)
    return steps, limits


def _load_results(folder: Path, task: str) -> list | None:
    """A task's results as the worker wrote them: JSON and safetensors only (no pickle: no code runs)."""
    import json

    from safetensors.torch import load_file

    from .probe import decode

    jpath, tpath = folder / f"{task}.json", folder / f"{task}.safetensors"
    if not jpath.is_file() or not tpath.is_file() or jpath.stat().st_size > 200_000_000:
        return None
    try:
        data = json.loads(jpath.read_text())
        tensors = load_file(str(tpath))
        out = []
        for r in data["results"]:
            if "error" in r:
                out.append({"error": str(r["error"])[:200], "message": str(r.get("message", ""))[:4000]})
                continue
            out.append({"value": decode(r["value"], tensors),
                        "grads": None if r.get("grads") is None else [decode(g, tensors) for g in r["grads"]],
                        "changed": [(tuple(p), decode(v, tensors)) for p, v in r.get("changed", [])]})
        return out
    except Exception:  # noqa: BLE001 (malformed data from the worker: the task is not graded)
        return None


def grade_notebook(path: str | Path, source: str | Path | None = None, timeout: float = 60.0,
                   kernel_name: str = "python3", cwd: str | Path | None = None,
                   hide: list[str | Path] | None = None, fast: bool | None = None, log=None) -> GradeReport:
    """Grade a learner's notebook against its source in solutions/ (found by name when not given).

    The learner's cells run in a sandboxed worker (see sandbox.py); the checks run here, on the data it returns.
    timeout: seconds per cell (the source's read-only setup cells get at least SETUP_TIMEOUT).
    cwd, kernel_name: kept for compatibility (the worker always runs in a private temp folder).
    Raises ValueError when the notebook or its source cannot be read, the source has no test cells, or the
    source's fixtures are missing or out of date.
    """
    import shutil
    import tempfile

    from .probe import compare_grads, ensure_fixture, run_test_cell_in, worker_inputs
    from .sandbox import run_worker

    path = Path(path)
    learner = read_notebook(path)
    source = Path(source) if source is not None else find_source(path, learner)
    source = check_source(source)
    src_nb = read_notebook(source)
    if not autograded_cells(src_nb):
        raise ValueError(f"{source} has no autograded test cells: it is not an exercise notebook")
    if timeout < 1:
        raise ValueError(f"timeout must be at least 1 second per cell, got {timeout}")
    fixture = ensure_fixture(source, src_nb, log=log)
    notes = _source_checks(learner, src_nb, path)

    nb, test_index = rebuild_for_grading(learner, src_nb)
    steps, limits = _plan(nb, timeout)
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="dsv3-grade-"))
    try:
        import torch
        torch.save(worker_inputs(fixture), workdir / "inputs.pt")
        run = run_worker(workdir, steps, limits, total_limit=sum(limits) + 120, fast=fast, log=log)
        results = {s["task"]: _load_results(workdir / "results", s["task"]) for s in steps if s["kind"] == "probe"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    # the checks, here (trusted): the source's test cells on the worker's results
    step_of = {s["cell"]: j for j, s in enumerate(steps)}
    task_state: dict[str, tuple[str, str]] = {}
    for gid, i in test_index.items():
        out = run.outcomes.get(step_of.get(i, -1))
        if out is None or out.status == "not run":
            task_state[gid] = ("not run", out.message if out else "not run")
        elif out.status == "timeout":
            task_state[gid] = ("timeout", f"timed out: your code {out.message}")
        elif out.status in ("died", "output"):
            task_state[gid] = ("failed", out.message)
        elif results.get(gid) is None:
            task_state[gid] = ("failed", "the grading worker returned no usable results for this task")
    checks = run_test_cell_in(src_nb, fixture, results, skip=set(task_state))
    tasks = []
    for gid, i in test_index.items():
        cell = nb.cells[i]
        pts = points(cell)
        if gid in task_state:
            status, msg = task_state[gid]
            tasks.append(TaskResult(gid, pts, 0.0, status, msg))
            continue
        err, code = checks.get(gid, (None, ""))
        if err is not None:
            tasks.append(TaskResult(gid, pts, 0.0, "failed", _message(err, code)))
            continue
        bad = compare_grads(gid, fixture["probes"].get(gid, []), results[gid])
        if bad:
            tasks.append(TaskResult(gid, pts, 0.0, "failed", f"GradientError: {bad}"))
        else:
            tasks.append(TaskResult(gid, pts, pts, "passed", ""))
    seconds = time.perf_counter() - t0

    errors = []
    for j, s in enumerate(steps):
        out = run.outcomes.get(j)
        if s["kind"] != "cell" or out is None:
            continue
        label = grade_id(nb.cells[s["cell"]]) or (nb.cells[s["cell"]].source.strip().splitlines() or [""])[0][:40]
        if out.status == "error" and out.error:
            ename, evalue = out.error
            errors.append(f"cell {s['cell']} ({label}): {ename}: {evalue}" if evalue else
                          f"cell {s['cell']} ({label}): {ename}")
        elif out.status in ("timeout", "died", "output"):
            errors.append(f"cell {s['cell']} ({label}): {out.message}")
    # the notebook as graded: each cell with what it printed, each test with its verdict
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    from nbformat.v4 import new_output
    for j, s in enumerate(steps):
        out = run.outcomes.get(j)
        cell = nb.cells[s["cell"]]
        if out is not None and out.output:
            cell.outputs.append(new_output("stream", name="stdout", text=out.output))
        if s["kind"] == "probe":
            t = next(t for t in tasks if t.grade_id == s["task"])
            cell.outputs.append(new_output("stream", name="stdout",
                                           text=f"[grader] {t.status}, {t.score:g}/{t.points:g} {t.message}\n"))
    return GradeReport(str(path), str(source), tasks, errors, seconds, nb, notes, run.sandbox)
