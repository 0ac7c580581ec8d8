"""The check cell at the end of every exercise: ``from dsv3_edu.grade import check; check()``.

It finds the notebook it runs in, grades the saved file with the same sandboxed grader as
``python -m dsv3_edu.grade``, and shows the per-task table (HTML in Jupyter, text elsewhere).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

SAVE_FIRST = "It grades the notebook as saved on disk: save it first (Ctrl+S / Cmd+S)."


def _session_path() -> str | None:
    """The path of the notebook this kernel belongs to, as the front end told the kernel, if it did."""
    try:
        from IPython import get_ipython
        ip = get_ipython()
    except ImportError:
        ip = None
    ns = ip.user_ns if ip is not None else {}
    for key in ("__session__", "__vsc_ipynb_file__"):  # ipykernel sets __session__ from JPY_SESSION_NAME
        value = ns.get(key)
        if isinstance(value, str) and value.endswith(".ipynb"):
            return value
    value = os.environ.get("JPY_SESSION_NAME", "")
    return value if value.endswith(".ipynb") else None


def find_notebook(notebook: str | os.PathLike | None = None) -> Path:
    """The notebook to grade: the one given, else the one this kernel runs (JupyterLab tells the kernel)."""
    from .cells import resolve_notebook

    if notebook is not None:
        return resolve_notebook(notebook)
    found = _session_path()
    if found:
        p = Path(found)
        for cand in (p, Path.cwd() / p, Path.cwd() / p.name):
            if cand.is_file():
                return cand
    raise ValueError("cannot tell which notebook this is (the front end did not say): "
                     "call check(\"02_mla.ipynb\") with your notebook's file name")


def check(notebook: str | os.PathLike | None = None, timeout: float = 60.0):
    """Grade this notebook (saved on disk) and show the score table; returns the GradeReport.

    notebook: the file to grade (default: the notebook this kernel runs, from JupyterLab's session).
    """
    if os.environ.get("DSV3_GRADE_WORKER") == "1":
        print("check() does nothing while the grader runs this notebook")
        return None
    from .grader import grade_notebook

    try:
        path = find_notebook(notebook)
    except ValueError as e:
        _show_text(f"check(): {e}. {SAVE_FIRST}")
        return None
    age = time.time() - path.stat().st_mtime
    print(f"grading {path.name}, saved {_ago(age)}. {SAVE_FIRST} This takes a minute ...", flush=True)
    report = grade_notebook(path, timeout=timeout)
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
        if get_ipython() is not None:
            display(HTML(report.html()))
            return None
    except ImportError:
        pass
    print(report.table())
    details = report.details()
    if details:
        print("\n" + details)
    return report


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _show_text(text: str) -> None:
    print(text)
