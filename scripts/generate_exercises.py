"""Write exercises/ from solutions/ with nbgrader's preprocessors.

--check: only check that they agree (exit 1 if not).

Same as `python -m dsv3_edu.grade generate ...`; see docs/exercises.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dsv3_edu.grade.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
