"""Re-execute notebooks/ and solutions/ in full mode to refresh committed outputs, then clean them.

--fast: DSV3_FAST=1; --only PATTERN: e.g. '02_*' or 'solutions/*'.

Same as `python -m dsv3_edu.grade refresh ...`; see docs/exercises.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dsv3_edu.grade.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["refresh", *sys.argv[1:]]))
