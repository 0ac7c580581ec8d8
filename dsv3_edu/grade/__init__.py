"""The autograder: exercises generated from solutions/, honest self-study grading, nbgrader for classrooms.

    python -m dsv3_edu.grade 02_mla.ipynb                grade your notebook (score table), from any folder
    from dsv3_edu.grade import check; check()            the same, from the exercise's last cell
    python -m dsv3_edu.grade generate [--check]          exercises/ from solutions/
    python -m dsv3_edu.grade nbgrader-course DIR         an nbgrader course folder from solutions/
    python -m dsv3_edu.grade refresh [--fast] [--only P] re-execute notebooks/ and solutions/, then clean
    python -m dsv3_edu.grade clean [--check] [PATHS]     strip widget state, timings, absolute paths

The exercise format is nbgrader's; docs/exercises.md explains how to write one.
"""
import importlib

_EXPORTS = {
    "find_source": "cells", "read_notebook": "cells", "repo_root": "cells", "resolve_notebook": "cells",
    "clean_file": "clean", "clean_notebook": "clean", "notebook_problems": "clean",
    "make_nbgrader_course": "course", "nbgrader_api": "course", "autograde_course": "course",
    "course_notebooks": "execute", "execute_notebook": "execute", "kernel_env": "execute",
    "refresh_notebooks": "execute",
    "check_exercises": "generate", "generate_exercises": "generate", "make_exercise": "generate",
    "GradeReport": "grader", "TaskResult": "grader", "grade_notebook": "grader", "rebuild_for_grading": "grader",
    "check": "checkcell", "find_notebook": "checkcell",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Imported on first use: the sandboxed worker imports this package and must start fast."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
