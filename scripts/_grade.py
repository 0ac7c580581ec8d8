"""Shared by the scripts here: run ``python -m dsv3_edu.grade COMMAND ARGS`` from a checkout without installing."""
import sys
from pathlib import Path


def run(command: str) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dsv3_edu.grade.__main__ import main
    return main([command, *sys.argv[1:]])
