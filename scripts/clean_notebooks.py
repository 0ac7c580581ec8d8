"""Strip widget state, execution timing metadata and absolute paths from notebooks, in place.

No paths: notebooks/, solutions/, exercises/. --check: report problems only (exit 1 if any).

Same as `python -m dsv3_edu.grade clean ...`; see docs/exercises.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dsv3_edu.grade.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["clean", *sys.argv[1:]]))
