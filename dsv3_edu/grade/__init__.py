"""The autograder: exercises generated from solutions/, honest self-study grading, nbgrader for classrooms.

    python -m dsv3_edu.grade exercises/02_mla.ipynb      grade your notebook (score table)
    python -m dsv3_edu.grade generate [--check]          exercises/ from solutions/
    python -m dsv3_edu.grade nbgrader-course DIR         an nbgrader course folder from solutions/
    python -m dsv3_edu.grade refresh [--fast] [--only P] re-execute notebooks/ and solutions/, then clean
    python -m dsv3_edu.grade clean [--check] [PATHS]     strip widget state, timings, absolute paths

The exercise format is nbgrader's; docs/exercises.md explains how to write one.
"""
from .cells import find_source, read_notebook, repo_root
from .clean import clean_file, clean_notebook, notebook_problems
from .course import make_nbgrader_course, nbgrader_api
from .execute import course_notebooks, execute_notebook, kernel_env, refresh_notebooks
from .generate import check_exercises, generate_exercises, make_exercise
from .grader import GradeReport, TaskResult, grade_notebook, rebuild_for_grading

__all__ = [
    "GradeReport", "TaskResult", "grade_notebook", "rebuild_for_grading",
    "make_exercise", "generate_exercises", "check_exercises",
    "make_nbgrader_course", "nbgrader_api",
    "execute_notebook", "refresh_notebooks", "course_notebooks", "kernel_env",
    "clean_notebook", "clean_file", "notebook_problems",
    "find_source", "read_notebook", "repo_root",
]
