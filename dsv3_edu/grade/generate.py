"""exercises/ from solutions/: nbgrader's own preprocessors, run in memory.

The chain is the release half of ``nbgrader generate_assignment`` (without its database step): lock test
cells, replace every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` block by ``raise NotImplementedError()``,
clear outputs, drop ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` blocks, record checksums, validate
the metadata. exercises/ is never edited by hand; ``check_exercises`` says when it is out of date.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from .cells import (
    SOURCE_KEY,
    autograded_cells,
    read_notebook,
    repo_root,
    solution_notebooks,
)
from .clean import clean_notebook


def make_exercise(solution: NotebookNode, name: str | None = None) -> NotebookNode:
    """The learner's version of a solution notebook (a new notebook; the input is not modified)."""
    from nbgrader.preprocessors import (
        CheckCellMetadata,
        ClearHiddenTests,
        ClearMarkScheme,
        ClearOutput,
        ClearSolutions,
        ComputeChecksums,
        LockCells,
    )

    if not autograded_cells(solution):
        raise ValueError(f"{name or 'notebook'} has no autograded test cells (nbgrader metadata grade=true, "
                         "solution=false): it is not an exercise source")
    nb = copy.deepcopy(solution)
    resources: dict = {}
    # same order as nbgrader's GenerateAssignment: checksums after the hidden tests are gone
    for pp in (LockCells(), ClearSolutions(), ClearOutput(), ClearHiddenTests(), ClearMarkScheme(),
               ComputeChecksums(), CheckCellMetadata()):
        nb, resources = pp.preprocess(nb, resources)
    clean_notebook(nb)
    # what executing the solution wrote (the runner's Python version) is not part of the exercise
    if "language_info" in nb.metadata:
        nb.metadata["language_info"] = {"name": nb.metadata["language_info"].get("name", "python")}
    if name:
        nb.metadata[SOURCE_KEY] = {"exercise_source": f"solutions/{name}"}
    nb.cells += check_cells()
    return nb


CHECK_CODE = "from dsv3_edu.grade import check\n\ncheck()"


def check_cells() -> list[NotebookNode]:
    """The last two cells of every exercise: how to grade, and the cell that grades this notebook."""
    from nbformat.v4 import new_code_cell, new_markdown_cell

    md = new_markdown_cell(
        "## Check your work\n\n"
        "Save the notebook (Ctrl+S), then run the cell below. It grades the saved file exactly like "
        "`python -m dsv3_edu.grade` does: your cells run in a fresh sandboxed process, top to bottom, and the "
        "course's tests (hidden ones too) check your functions' results. The table shows each task's score and, "
        "for a failed task, the message of the first check that failed.")
    code = new_code_cell(CHECK_CODE)
    md["id"], code["id"] = "dsv3-check-md", "dsv3-check"
    for c in (md, code):
        c.metadata[SOURCE_KEY] = {"check": True}
        c.metadata["editable"] = False
        c.metadata["deletable"] = False
    return [md, code]


def _normalised(nb: NotebookNode) -> dict:
    return json.loads(nbformat.writes(nb))


def _dirs(solutions_dir, exercises_dir) -> tuple[Path, Path]:
    root = repo_root()
    return (Path(solutions_dir) if solutions_dir else root / "solutions",
            Path(exercises_dir) if exercises_dir else root / "exercises")


def _is_copy(path: Path) -> bool:
    """A learner's copy, e.g. JupyterLab's "02_mla-Copy1.ipynb": not a generated file."""
    return "-Copy" in path.stem or path.name.startswith(".")


def learner_edits(nb: NotebookNode) -> list[str]:
    """Signs that a learner worked in this exercise: outputs, or a solution cell that is no longer a stub."""
    from .cells import grade_id, is_solution_cell

    signs = []
    if any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code"):
        signs.append("it has outputs")
    edited = [grade_id(c) for c in nb.cells if is_solution_cell(c) and c.cell_type == "code"
              and "raise NotImplementedError()" not in c.source]
    if edited:
        signs.append(f"solution cells {', '.join(map(str, edited))} hold code")
    return signs


def generate_exercises(solutions_dir: str | Path | None = None, exercises_dir: str | Path | None = None,
                       force: bool = False, fixtures: bool = True, log=None) -> list[Path]:
    """Write exercises/<name> (and solutions/fixtures/<stem>.pt) for every solutions/<name>; the files that changed.

    An exercise a learner has worked in is not overwritten unless ``force``: ValueError lists them.
    """
    from .probe import (
        fixture_path,
        fixture_summary,
        load_fixture,
        record_fixture,
        save_fixture,
        source_digest,
    )

    solutions_dir, exercises_dir = _dirs(solutions_dir, exercises_dir)
    exercises_dir.mkdir(parents=True, exist_ok=True)
    changed, refused = [], []
    for src in solution_notebooks(solutions_dir):
        src_nb = read_notebook(src)
        ex = make_exercise(src_nb, src.name)
        out = exercises_dir / src.name
        if out.is_file() and _normalised(read_notebook(out)) == _normalised(ex):
            pass
        elif out.is_file() and not force and learner_edits(read_notebook(out)):
            refused.append(f"{out}: {'; '.join(learner_edits(read_notebook(out)))}")
        else:
            nbformat.write(ex, out)
            changed.append(out)
        fx = fixture_path(src)
        if fixtures and (force or not fx.is_file() or load_fixture(fx).get("digest") != source_digest(src_nb)):
            if log:
                log(f"recording the probes of {src.name} ...")
            fixture = record_fixture(src_nb)
            save_fixture(fixture, fx)
            if log:
                log(f"    {fixture_summary(fixture)}")
            changed.append(fx)
    if refused:
        raise ValueError("not overwritten, you have worked in them (copy your work elsewhere, or pass --force):\n  "
                         + "\n  ".join(refused))
    return changed


def check_exercises(solutions_dir: str | Path | None = None,
                    exercises_dir: str | Path | None = None) -> list[str]:
    """Problems that make exercises/ (or the fixtures) differ from what solutions/ generates (empty: in sync)."""
    from .probe import fixture_path, load_fixture, source_digest

    solutions_dir, exercises_dir = _dirs(solutions_dir, exercises_dir)
    problems = []
    sources = solution_notebooks(solutions_dir)
    for src in sources:
        src_nb = read_notebook(src)
        fx = fixture_path(src)
        if not fx.is_file():
            problems.append(f"{fx.name}: missing from {solutions_dir.name}/fixtures/ (generate it)")
        elif load_fixture(fx).get("digest") != source_digest(src_nb):
            problems.append(f"{fx.name}: out of date with {solutions_dir.name}/{src.name} (regenerate it)")
        out = exercises_dir / src.name
        if not out.is_file():
            problems.append(f"{out.name}: missing from {exercises_dir.name}/ (generate it)")
            continue
        try:
            current = _normalised(read_notebook(out))
        except ValueError as e:
            problems.append(str(e))
            continue
        if current != _normalised(make_exercise(src_nb, src.name)):
            problems.append(f"{out.name}: out of date with {solutions_dir.name}/{src.name} (regenerate it)")
    names = {s.name for s in sources}
    for out in sorted(exercises_dir.glob("*.ipynb")):
        if out.name not in names and not _is_copy(out):
            problems.append(f"{out.name}: in {exercises_dir.name}/ but has no source in {solutions_dir.name}/")
    return problems
