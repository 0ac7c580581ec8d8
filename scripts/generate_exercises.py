"""Write exercises/ from solutions/ with nbgrader's preprocessors.

--check: only check that they agree (exit 1 if not).

Same as `python -m dsv3_edu.grade generate ...`; see docs/exercises.md.
"""
import sys

from _grade import run  # scripts/ is on sys.path when a script runs

if __name__ == "__main__":
    sys.exit(run("generate"))
