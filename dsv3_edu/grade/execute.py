"""Executing the course's notebooks top to bottom (CI checks and refreshing committed outputs)."""
from __future__ import annotations

import fnmatch
import os
import time
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from .cells import repo_root
from .clean import clean_notebook


def kernel_env(fast: bool | None = None) -> dict[str, str]:
    """Environment for a notebook kernel: this one, with the checkout on PYTHONPATH (so the kernel imports
    this dsv3_edu even if it is not installed) and DSV3_FAST set when ``fast`` is not None.

    A fast-mode kernel also gets ``OMP_NUM_THREADS=1`` unless the variable is already set. Fast mode trains toy
    sizes whose many small ops gain little from a second thread, and on a busy machine (CI next to other jobs)
    every parallel op waits for the thread that is not scheduled (notebooks 04, 05, 09: about 230 s each in
    such a CI run with torch's default 2 threads on 2 cores, 25-40 s each with one thread on the same machine).
    Full mode keeps torch's thread count: its outputs are committed, and threads change how sums are reduced.
    """
    env = dict(os.environ)
    root = repo_root()
    if (root / "dsv3_edu").is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if fast is not None:
        env["DSV3_FAST"] = "1" if fast else "0"
    if fast:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def course_notebooks(root: Path | None = None) -> list[Path]:
    """Notebooks that run top to bottom: notebooks/*.ipynb then solutions/*.ipynb (exercises/ are stubs)."""
    root = root or repo_root()
    return sorted((root / "notebooks").glob("*.ipynb")) + sorted((root / "solutions").glob("*.ipynb"))


def execute_notebook(path: str | Path, fast: bool = True, timeout: int = 1800,
                     kernel_name: str = "python3") -> tuple[NotebookNode, float]:
    """Run a notebook in a fresh kernel, cwd = its folder; (executed notebook, seconds).

    Raises nbclient's CellExecutionError (with the traceback) at the first failing cell.
    timeout: seconds per cell.
    """
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    t0 = time.perf_counter()
    client.execute(env=kernel_env(fast))
    return nb, time.perf_counter() - t0


def refresh_notebooks(fast: bool = False, only: str | None = None, paths: list[Path] | None = None,
                      log=print) -> list[tuple[Path, float]]:
    """Re-execute notebooks in place (full mode unless ``fast``) and clean them; [(path, seconds)].

    only: a glob pattern on the file name or the path relative to the repo (``02_*``, ``solutions/*``).
    """
    root = repo_root()
    paths = paths if paths is not None else course_notebooks(root)
    if only:
        def rel(p: Path) -> str:
            try:
                return str(p.resolve().relative_to(root))
            except ValueError:
                return str(p)
        paths = [p for p in paths if fnmatch.fnmatch(p.name, only) or fnmatch.fnmatch(rel(p), only)]
    done = []
    for p in paths:
        log(f"executing {p} ({'fast' if fast else 'full'} mode) ...")
        nb, seconds = execute_notebook(p, fast=fast)
        nbformat.write(clean_notebook(nb), p)
        log(f"    {seconds:.1f} s")
        done.append((p, seconds))
    return done
