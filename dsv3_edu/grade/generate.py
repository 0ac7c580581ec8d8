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

from .cells import SOURCE_KEY, autograded_cells, read_notebook, repo_root, solution_notebooks
from .clean import clean_notebook


def make_exercise(solution: NotebookNode, name: str | None = None) -> NotebookNode:
    """The learner's version of a solution notebook (a new notebook; the input is not modified)."""
    from nbgrader.preprocessors import (CheckCellMetadata, ClearHiddenTests, ClearMarkScheme, ClearOutput,
                                        ClearSolutions, ComputeChecksums, LockCells)

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
    return nb


def _normalised(nb: NotebookNode) -> dict:
    return json.loads(nbformat.writes(nb))


def _dirs(solutions_dir, exercises_dir) -> tuple[Path, Path]:
    root = repo_root()
    return (Path(solutions_dir) if solutions_dir else root / "solutions",
            Path(exercises_dir) if exercises_dir else root / "exercises")


def generate_exercises(solutions_dir: str | Path | None = None,
                       exercises_dir: str | Path | None = None) -> list[Path]:
    """Write exercises/<name> for every solutions/<name>; return the files that changed."""
    solutions_dir, exercises_dir = _dirs(solutions_dir, exercises_dir)
    exercises_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for src in solution_notebooks(solutions_dir):
        ex = make_exercise(read_notebook(src), src.name)
        out = exercises_dir / src.name
        if out.is_file() and _normalised(read_notebook(out)) == _normalised(ex):
            continue
        nbformat.write(ex, out)
        changed.append(out)
    return changed


def check_exercises(solutions_dir: str | Path | None = None,
                    exercises_dir: str | Path | None = None) -> list[str]:
    """Problems that make exercises/ differ from what solutions/ generates (empty list: in sync)."""
    solutions_dir, exercises_dir = _dirs(solutions_dir, exercises_dir)
    problems = []
    sources = solution_notebooks(solutions_dir)
    for src in sources:
        out = exercises_dir / src.name
        if not out.is_file():
            problems.append(f"{out.name}: missing from {exercises_dir.name}/ (generate it)")
            continue
        try:
            current = _normalised(read_notebook(out))
        except ValueError as e:
            problems.append(str(e))
            continue
        if current != _normalised(make_exercise(read_notebook(src), src.name)):
            problems.append(f"{out.name}: out of date with {solutions_dir.name}/{src.name} (regenerate it)")
    names = {s.name for s in sources}
    for out in sorted(exercises_dir.glob("*.ipynb")):
        if out.name not in names:
            problems.append(f"{out.name}: in {exercises_dir.name}/ but has no source in {solutions_dir.name}/")
    return problems
