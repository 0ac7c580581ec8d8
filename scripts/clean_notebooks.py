"""Strip widget state, execution timing metadata and absolute paths from notebooks, in place.

No paths: notebooks/, solutions/, exercises/. --check: report problems only (exit 1 if any).

Same as `python -m dsv3_edu.grade clean ...`; see docs/exercises.md.
"""
import sys

from _grade import run  # scripts/ is on sys.path when a script runs

if __name__ == "__main__":
    sys.exit(run("clean"))
