"""The grading worker: runs a learner's cells and evaluates their functions on the probes. UNTRUSTED side.

    python -m dsv3_edu.grade.worker DIR

Started by ``sandbox.run_worker`` inside the sandbox, with DIR its only writable folder. It reads
DIR/plan.json (the steps: learner/setup cells to run, and the tasks whose probes to evaluate where their test
cells would run) and DIR/inputs.pt (the probes' arguments), and writes, as data only:

- DIR/progress.jsonl   one line when each step starts and ends (with the error a cell raised, if any)
- DIR/out/<step>.txt   what the step printed (capped)
- DIR/results/<task>.json + .safetensors   each probe's value, gradients and arguments changed in place

Nothing here is trusted by the grader: the learner's code runs in this process and can change anything in it.
The grader only reads the data back and checks it outside (``probe.check_task``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

STEP_OUTPUT_CAP = 100_000  # characters of printed output kept per step (for --save)


class _CappedWriter:
    """A text stream that keeps the first STEP_OUTPUT_CAP characters and drops the rest."""

    def __init__(self):
        self.parts, self.n = [], 0

    def write(self, s):
        s = str(s)
        if self.n < STEP_OUTPUT_CAP:
            self.parts.append(s[:STEP_OUTPUT_CAP - self.n])
        self.n += len(s)
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return False

    def text(self) -> str:
        extra = f"\n... ({self.n - STEP_OUTPUT_CAP} more characters not kept)" if self.n > STEP_OUTPUT_CAP else ""
        return "".join(self.parts) + extra


def _describe(e: BaseException) -> tuple[str, str]:
    try:
        msg = str(e)
    except BaseException:  # noqa: BLE001 (a learner's exception whose __str__ fails)
        msg = ""
    return type(e).__name__, msg[:4000]


def _probe_results(task: str, probes: list, ns: dict, outdir: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from .probe import _grads, _leaves, _tensors, clone_args, encode

    tensors: dict = {}
    results = []
    for probe in probes:
        fn = ns.get(probe["fn"])
        if fn is None:
            results.append({"error": "NameError", "message": f"name '{probe['fn']}' is not defined"})
            continue
        try:
            args, kwargs = clone_args(list(probe["args"])), clone_args(probe["kwargs"])
            before = {("args",) + p: t.detach().clone() for p, t in _tensors(args)}
            before.update({("kwargs",) + p: t.detach().clone() for p, t in _tensors(kwargs)})
            with (torch.enable_grad() if probe.get("grad_enabled", True) else torch.no_grad()):
                out = fn(*args, **kwargs)
            grads = _grads(out, (args, kwargs), probe) if probe.get("cotangents") else None
            changed = []
            for path, t in list(_tensors(args, ("args",))) + list(_tensors(kwargs, ("kwargs",))):
                old = before.get(path)
                if old is not None and (old.shape != t.shape or not torch.equal(old, t.detach())):
                    changed.append([list(path), encode(t, tensors)])
            n_leaves = len(list(_leaves((args, kwargs))))
            results.append({"value": encode(out, tensors),
                            "grads": None if grads is None else [encode(g, tensors) for g in grads][:n_leaves],
                            "changed": changed})
        except BaseException as e:  # noqa: BLE001 (SystemExit, KeyboardInterrupt: the learner's, not ours)
            name, msg = _describe(e)
            results.append({"error": name, "message": msg})
    save_file(tensors, str(outdir / f"{task}.safetensors"))
    (outdir / f"{task}.json").write_text(json.dumps({"task": task, "results": results}))


def main(folder: str) -> int:
    d = Path(folder)
    plan = json.loads((d / "plan.json").read_text())
    progress = open(d / "progress.jsonl", "a", buffering=1)  # noqa: SIM115 (open until the process ends)
    (d / "out").mkdir(exist_ok=True)
    (d / "results").mkdir(exist_ok=True)

    def log(**kw):
        progress.write(json.dumps({"t": time.time(), **kw}) + "\n")
        progress.flush()

    log(event="ready", pid=os.getpid())
    import matplotlib
    matplotlib.use("Agg")
    import torch
    from IPython.core.interactiveshell import InteractiveShell

    inputs = torch.load(d / "inputs.pt", weights_only=False)
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # no history database: DIR is the only writable folder
    shell = InteractiveShell.instance(config=config)
    skip = set(plan.get("skip", []))
    skip_probes = set(plan.get("skip_probes", []))
    real_out, real_err = sys.stdout, sys.stderr
    for s, step in enumerate(plan["steps"]):
        if s in skip:
            continue
        if step["kind"] == "probe" and s in skip_probes:
            continue
        log(event="start", step=s)
        cap = _CappedWriter()
        sys.stdout = sys.stderr = cap
        error = None
        try:
            if step["kind"] == "cell":
                r = shell.run_cell(step["code"], store_history=False, silent=False)
                err = r.error_in_exec or r.error_before_exec
                if err is not None:
                    error = _describe(err)
            else:
                _probe_results(step["task"], inputs["probes"].get(step["task"], []), shell.user_ns, d / "results")
        except BaseException as e:  # noqa: BLE001
            error = _describe(e)
        finally:
            sys.stdout, sys.stderr = real_out, real_err
        (d / "out" / f"{s}.txt").write_text(cap.text())
        log(event="end", step=s, error=error)
    log(event="done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
