"""Keep committed notebooks small and free of machine noise.

``clean_notebook`` strips what executing a notebook leaves behind that says nothing to a reader: ipywidgets
state (often megabytes), per-cell execution timestamps, and absolute paths of the machine that ran it (in
warnings and tracebacks). ``notebook_problems`` is the matching check used by the tests.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from .cells import repo_root

MAX_NOTEBOOK_BYTES = 2_000_000   # one committed notebook
MAX_OUTPUT_BYTES = 500_000       # one non-image output
MAX_IMAGE_BYTES = 1_000_000      # one image (base64 text as stored)
MAX_WIDGETS_BYTES = 10_000       # metadata.widgets, if any is left
BINARY_MIMES = ("image/png", "image/jpeg", "image/gif", "application/pdf")

# an absolute path of a build or user machine, as it shows up in a warning or a traceback
ABS_PATH = re.compile(r"/(?:work|home|root|tmp|Users|private|var/folders)/")
_SITE = re.compile(r"/[^\s'\"<>:]*?/(?:site|dist)-packages/")
_STDLIB = re.compile(r"/[^\s'\"<>:]*?/lib/python3\.\d+/")
_TMP = re.compile(r"/(?:tmp|private/var/folders|var/folders)/[^\s'\"<>:]*")
_HOME = re.compile(r"/(?:root|home/[^/\s'\"]+|Users/[^/\s'\"]+)(?=/|\b)")
_WORK = re.compile(r"/work/")
_ANSI_END = re.compile(r"\x1b\[[\d;]*m$")


def _starts_path(text: str, start: int) -> bool:
    """A match at ``start`` is an absolute path, not the middle of a word, URL or relative path.

    Tracebacks colour paths with ANSI codes ("\\x1b[0;32m/root/..."), so a preceding colour code counts as a start.
    """
    if start == 0 or not (text[start - 1].isalnum() or text[start - 1] in "_.~<>-/"):
        return True
    return bool(_ANSI_END.search(text, 0, start))


def _sub(pattern: re.Pattern, repl: str, text: str) -> str:
    return pattern.sub(lambda m: repl if _starts_path(text, m.start()) else m.group(0), text)


def find_abs_path(text: str) -> int:
    """Index of the first machine-specific absolute path in text, or -1."""
    for m in ABS_PATH.finditer(text):
        if _starts_path(text, m.start()):
            return m.start()
    return -1


def scrub_paths(text: str, root: Path | None = None) -> str:
    """Replace machine-specific absolute paths: the repo becomes relative, packages <site-packages>/..."""
    root = str(root or repo_root())
    text = text.replace(root + os.sep, "").replace(root, ".")
    gettmp = tempfile.gettempdir()
    if gettmp not in ("/tmp", "/"):
        text = text.replace(gettmp, "<tmp>")
    for pattern, repl in ((_SITE, "<site-packages>/"), (_STDLIB, "<python>/"), (_TMP, "<tmp>"),
                          (_HOME, "~"), (_WORK, "<work>/")):
        text = _sub(pattern, repl, text)
    return text


def _text_fields(output: NotebookNode):
    """(container, key) pairs of an output's text that a reader sees (not base64 images)."""
    if output.get("output_type") == "stream":
        yield output, "text"
    elif output.get("output_type") == "error":
        yield output, "evalue"
        for i in range(len(output.get("traceback", []))):
            yield output["traceback"], i
    for mime in output.get("data", {}):
        if mime not in BINARY_MIMES:
            yield output["data"], mime


def clean_notebook(nb: NotebookNode, root: Path | None = None) -> NotebookNode:
    """Strip widget state, execution timing and absolute paths, in place; returns nb."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for key in ("execution", "ExecuteTime"):
            cell.get("metadata", {}).pop(key, None)
        for output in cell.get("outputs", []):
            for container, key in _text_fields(output):
                value = container[key]
                if isinstance(value, list):  # multi-line strings may be stored as lists of lines
                    container[key] = [scrub_paths(v, root) for v in value]
                elif isinstance(value, str):
                    container[key] = scrub_paths(value, root)
    return nb


def clean_file(path: str | Path) -> bool:
    """Clean a notebook file in place; True if it changed (unchanged files are not rewritten)."""
    path = Path(path)
    before = path.read_text(encoding="utf-8")
    nb = nbformat.reads(before, as_version=4)
    after = nbformat.writes(clean_notebook(nb))
    if not after.endswith("\n"):
        after += "\n"
    if after != before:
        path.write_text(after, encoding="utf-8")
        return True
    return False


def notebook_problems(path: str | Path, allow_outputs: bool = True) -> list[str]:
    """What makes a committed notebook unclean (empty list: clean). allow_outputs=False for exercises/."""
    import json

    path = Path(path)
    problems = []
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        problems.append(f"file is {size / 1e6:.1f} MB (budget {MAX_NOTEBOOK_BYTES / 1e6:.1f} MB)")
    nb = nbformat.read(path, as_version=4)
    widgets = nb.metadata.get("widgets")
    if widgets is not None and len(json.dumps(widgets)) > MAX_WIDGETS_BYTES:
        problems.append(f"metadata.widgets holds {len(json.dumps(widgets))} bytes of widget state")
    for i, cell in enumerate(nb.cells):
        where = f"cell {i}"
        if "execution" in cell.get("metadata", {}):
            problems.append(f"{where}: execution timing metadata")
        outputs = cell.get("outputs", [])
        if not allow_outputs and (outputs or cell.get("execution_count") is not None):
            problems.append(f"{where}: has outputs (exercise notebooks must have none)")
        for output in outputs:
            for container, key in _text_fields(output):
                value = container[key]
                text = "".join(value) if isinstance(value, list) else str(value)
                at = find_abs_path(text)
                if at >= 0:
                    snippet = text[at:at + 60].splitlines()[0]
                    problems.append(f"{where}: absolute path in output: {snippet!r}")
                    break
            for mime, value in output.get("data", {}).items():
                n = len(value) if isinstance(value, str) else len(json.dumps(value))
                limit = MAX_IMAGE_BYTES if mime.startswith("image/") else MAX_OUTPUT_BYTES
                if n > limit:
                    problems.append(f"{where}: {mime} output of {n / 1e3:.0f} KB (limit {limit / 1e3:.0f} KB)")
            if output.get("output_type") == "stream" and len(output.get("text", "")) > MAX_OUTPUT_BYTES:
                problems.append(f"{where}: stream output of {len(output['text']) / 1e3:.0f} KB")
    return problems


def committed_notebooks(root: Path | None = None) -> list[tuple[Path, bool]]:
    """(path, outputs allowed) for every notebook the repo commits: notebooks/, solutions/, exercises/."""
    root = root or repo_root()
    return [(p, folder != "exercises") for folder in ("notebooks", "solutions", "exercises")
            for p in sorted((root / folder).glob("*.ipynb"))
            if "-Copy" not in p.stem]  # JupyterLab's Duplicate ("02_mla-Copy1.ipynb"): a learner's file
