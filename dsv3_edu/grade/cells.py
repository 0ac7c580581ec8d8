"""Reading notebooks and their nbgrader cell metadata; where the course's folders are.

An exercise notebook uses nbgrader's cell metadata (schema 3) unchanged, so the same files work with
nbgrader in a classroom and with ``python -m dsv3_edu.grade`` at home:

- solution cell:  ``{"solution": true,  "grade": false, "locked": false, "grade_id": ...}``
- test cell:      ``{"solution": false, "grade": true,  "locked": true,  "grade_id": ..., "points": N}``
- read-only cell: ``{"solution": false, "grade": false, "locked": true,  "grade_id": ...}`` (e.g. setup code)

These helpers are plain dict look-ups (nbgrader's own ``nbgrader.utils`` takes seconds to import).
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat import NotebookNode


def repo_root() -> Path:
    """The source checkout holding solutions/ and exercises/ (editable install), else the current folder."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def read_notebook(path: str | Path) -> NotebookNode:
    """Read a notebook as nbformat v4; a clear ValueError if the file is missing or not a notebook."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such notebook: {path}")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as e:  # noqa: BLE001 (nbformat raises several kinds (JSON, schema, version))
        raise ValueError(f"{path} is not a readable Jupyter notebook ({type(e).__name__}: {e})") from None


def _meta(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def grade_id(cell: NotebookNode) -> str | None:
    """The cell's nbgrader grade_id, or None for an ordinary cell."""
    return _meta(cell).get("grade_id") or None


def is_solution_cell(cell: NotebookNode) -> bool:
    """A cell the learner writes (nbgrader ``solution``)."""
    return bool(_meta(cell).get("solution", False))


def is_test_cell(cell: NotebookNode) -> bool:
    """An autograded test cell: ``grade`` and not ``solution`` (a code cell whose points are won if it runs)."""
    m = _meta(cell)
    return bool(m.get("grade", False)) and not m.get("solution", False) and cell.cell_type == "code"


def is_readonly_cell(cell: NotebookNode) -> bool:
    """A locked cell that is neither a solution nor graded (e.g. setup code): restored from the source when grading."""
    m = _meta(cell)
    return bool(m.get("locked", False)) and not m.get("solution", False) and not m.get("grade", False)


def points(cell: NotebookNode) -> float:
    return float(_meta(cell).get("points", 0))


def autograded_cells(nb: NotebookNode) -> list[NotebookNode]:
    """The autograded test cells of a notebook, in order."""
    return [c for c in nb.cells if is_test_cell(c)]


def solution_notebooks(solutions_dir: str | Path | None = None) -> list[Path]:
    """All exercise sources: solutions/*.ipynb, sorted."""
    d = Path(solutions_dir) if solutions_dir is not None else repo_root() / "solutions"
    return sorted(p for p in d.glob("*.ipynb") if not p.name.startswith("."))


# generated exercises remember their source's file name here, so a renamed copy can still be graded
SOURCE_KEY = "dsv3_edu"


def find_source(notebook: str | Path, nb: NotebookNode | None = None) -> Path:
    """The solutions/ notebook that a learner's notebook was generated from: only this checkout's solutions/.

    <name> is the file name the exercise was generated with (kept in the notebook's metadata, so
    "02_mla-Copy1.ipynb" works too), else the file's own name. A folder named solutions/ near the notebook
    is never used: tests come from the course's own sources only.
    """
    notebook = Path(notebook).resolve()
    names = [notebook.name]
    if nb is not None:
        recorded = nb.metadata.get(SOURCE_KEY, {}).get("exercise_source")
        if recorded:
            names.insert(0, Path(str(recorded)).name)
    folder = repo_root() / "solutions"
    for name in names:
        if (folder / name).is_file():
            return folder / name
    stem = notebook.stem.split("-Copy")[0]
    if (folder / f"{stem}.ipynb").is_file():
        return folder / f"{stem}.ipynb"
    raise ValueError(
        f"cannot find the source of {notebook.name}: looked for {names[0]} in {folder}; "
        "pass the source notebook with --source")


def check_source(source: str | Path) -> Path:
    """A source notebook the grader may take tests from: one in this checkout's solutions/ (resolved path)."""
    source = Path(source).resolve()
    folder = (repo_root() / "solutions").resolve()
    if source.parent != folder:
        raise ValueError(f"--source must be a notebook in the course's solutions/ folder ({folder}), got {source}: "
                         "tests only come from the sources that ship with the course (an instructor's own "
                         "source goes into solutions/, then `python -m dsv3_edu.grade generate`)")
    if not source.is_file():
        raise ValueError(f"no such notebook: {source}")
    return source


def resolve_notebook(name: str | Path) -> Path:
    """A notebook given by path, or by bare file name from any folder: exercises/<name> of this checkout."""
    p = Path(name)
    if p.is_file():
        return p
    if len(p.parts) == 1:
        for folder in ("exercises", "solutions"):
            cand = repo_root() / folder / p.name
            if cand.is_file():
                return cand
    raise ValueError(f"no such notebook: {name}" + ("" if len(p.parts) > 1 else
                     f" (not here, nor in {repo_root() / 'exercises'})"))
