"""Re-execute notebooks/ and solutions/ in full mode to refresh committed outputs, then clean them.

--fast: DSV3_FAST=1; --only PATTERN: e.g. '02_*' or 'solutions/*'.

Same as `python -m dsv3_edu.grade refresh ...`; see docs/exercises.md.
"""
import sys

from _grade import run  # scripts/ is on sys.path when a script runs

if __name__ == "__main__":
    sys.exit(run("refresh"))
