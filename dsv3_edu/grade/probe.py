"""Probes: the learner's functions evaluated on recorded inputs, their results carried back as plain data.

How a task is graded (docs/exercises.md, "How grading works"):

1. ``record_fixture`` (run by ``grade generate``, trusted) executes a source notebook's setup, solution and
   test cells with every function a solution cell defines wrapped by a recorder. Each call a test cell makes
   (hidden tests included) is a *probe*: its arguments, and, when the test backpropagates through the result,
   the cotangent that reached it and the solution's gradients for every input that requires grad (tensor
   arguments and module parameters). The fixture is ``solutions/fixtures/<name>.pt``.
2. The worker (``worker.py``, untrusted, sandboxed) runs the learner's cells and, where a test cell would run,
   calls the learner's functions on the probes' arguments. It writes back only data: tensors in safetensors,
   the rest in JSON (``encode``); values, gradients for the recorded cotangent, and arguments changed in place.
3. The checker (``check_task``, trusted, outside the worker) runs the source's test cell itself, with each
   learner function replaced by a replay of the worker's results (``decode``; no pickle, no learner code).
   The test cell's own assertions (tolerances, order-free comparisons, hidden tests) judge the values, and
   every recorded gradient is compared with the solution's.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import copy
import hashlib
import io
import json
import math
from dataclasses import fields, is_dataclass
from pathlib import Path

import torch

FIXTURE_VERSION = 2
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5
ARG_RTOL, ARG_ATOL = 1e-4, 1e-5


# ------------------------------------------------------------------------------------------------ notebook parts
def defined_names(code: str) -> list[str]:
    """Top-level functions and classes a cell defines (the names a test may call)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def source_digest(nb) -> str:
    """sha256 of what the fixture depends on: the sources of the setup, solution and test cells, in order."""
    from .cells import grade_id, is_readonly_cell, is_solution_cell, is_test_cell

    h = hashlib.sha256()
    for c in nb.cells:
        if c.cell_type == "code" and (is_readonly_cell(c) or is_solution_cell(c) or is_test_cell(c)):
            h.update((grade_id(c) or "").encode() + b"\0" + c.source.encode() + b"\0")
    return h.hexdigest()


def fixture_path(source: Path) -> Path:
    return Path(source).parent / "fixtures" / (Path(source).stem + ".pt")


def _strip_magics(code: str) -> str:
    """Trusted cells run with exec(): drop IPython magics and shell lines (none in test cells today)."""
    return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in code.splitlines())


# ------------------------------------------------------------------------------------------------ tree walking
def _leaves(obj, path=()):
    """(path, tensor) for every tensor that requires grad: tensor arguments and module parameters."""
    if isinstance(obj, torch.Tensor):
        if obj.requires_grad:
            yield path, obj
    elif isinstance(obj, torch.nn.Module):
        for name, p in obj.named_parameters():
            if p.requires_grad:
                yield path + ("param", name), p
    elif isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            yield from _leaves(x, path + (i,))
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _leaves(obj[k], path + (k,))


def _tensors(obj, path=()):
    """(path, tensor) for every plain tensor argument (not module parameters): to see in-place changes."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            yield from _tensors(x, path + (i,))
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], path + (k,))


def _get(obj, path):
    for p in path:
        if p == "param":
            continue
        obj = obj.get_parameter(p) if isinstance(obj, torch.nn.Module) else obj[p]
    return obj


def _out_tensors(out) -> list[torch.Tensor]:
    """The tensors of a result, in a fixed order (the order ``encode`` stores them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for x in out for t in _out_tensors(x)]
    if isinstance(out, dict):
        return [t for k in sorted(out, key=str) for t in _out_tensors(out[k])]
    return []


def clone_args(obj):
    """A deep copy in which every tensor is a fresh leaf with the same requires_grad (modules deep-copied)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().clone()
        return t.requires_grad_(obj.requires_grad) if (t.is_floating_point() or t.is_complex()) else t
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj)
    if isinstance(obj, list):
        return [clone_args(x) for x in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(clone_args(x) for x in obj)
    if isinstance(obj, dict):
        return {k: clone_args(v) for k, v in obj.items()}
    try:
        return copy.deepcopy(obj)
    except Exception:  # noqa: BLE001 (an object that cannot be copied is passed as it is)
        return obj


# --------------------------------------------------------------------------------------------- data out of the worker
def encode(obj, tensors: dict, depth: int = 0):
    """A JSON-able tree for a result; tensors go to ``tensors`` (saved with safetensors)."""
    if depth > 20:
        return {"R": "too deeply nested"}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj if abs(obj) < 2 ** 62 else {"R": f"int too large: {obj}"}
    if isinstance(obj, float):
        return {"F": repr(obj)} if not math.isfinite(obj) else obj
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        t = obj.detach().cpu()
        if t.is_complex():
            tensors[key] = torch.view_as_real(t.resolve_conj()).clone(memory_format=torch.contiguous_format)
            return {"T": key, "complex": True}
        # its own, dense storage: safetensors refuses views that share memory
        tensors[key] = t.clone(memory_format=torch.contiguous_format)
        return {"T": key}
    if isinstance(obj, torch.Size):
        return {"U": [int(x) for x in obj]}
    if isinstance(obj, torch.dtype):
        return {"dtype": str(obj)}
    if type(obj).__module__ == "numpy":
        import numpy as np
        if isinstance(obj, np.ndarray):
            return encode(torch.from_numpy(np.ascontiguousarray(obj)), tensors, depth + 1)
        if isinstance(obj, np.generic):
            return encode(obj.item(), tensors, depth + 1)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return {"U": [encode(x, tensors, depth + 1) for x in obj]}
    if isinstance(obj, list):
        return {"L": [encode(x, tensors, depth + 1) for x in obj]}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"D": {k: encode(v, tensors, depth + 1) for k, v in obj.items()}}
    return {"R": f"an object of type {type(obj).__name__}"}


class Unencodable:
    """A result the worker could not carry back as data (a module, a generator, ...)."""

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}>"


def decode(tree, tensors: dict):
    """The inverse of ``encode`` (from the worker's JSON and safetensors only: no code runs)."""
    if tree is None or isinstance(tree, (bool, str, int, float)):
        return tree
    if not isinstance(tree, dict):
        raise TypeError("malformed result")
    if "T" in tree:
        t = tensors[tree["T"]]
        return torch.view_as_complex(t) if tree.get("complex") else t
    if "F" in tree:
        return float(tree["F"])
    if "U" in tree:
        return tuple(decode(x, tensors) for x in tree["U"])
    if "L" in tree:
        return [decode(x, tensors) for x in tree["L"]]
    if "D" in tree:
        return {str(k): decode(v, tensors) for k, v in tree["D"].items()}
    if "dtype" in tree:
        name = str(tree["dtype"]).removeprefix("torch.")
        return getattr(torch, name) if isinstance(getattr(torch, name, None), torch.dtype) else Unencodable(name)
    return Unencodable(str(tree.get("R", "unknown")))


# ------------------------------------------------------------------------------------------------ recording (trusted)
class _Recorder:
    def __init__(self):
        self.task = None          # grade_id of the test cell running now
        self.calls = {}           # task -> [probe]
        self.depth = 0

    def wrap(self, name, fn):
        rec = self

        def recorded(*args, **kwargs):
            if rec.task is None or rec.depth:
                return fn(*args, **kwargs)
            probe = {"fn": name, "args": clone_args(args), "kwargs": clone_args(kwargs),
                     "grad_enabled": torch.is_grad_enabled(), "cotangents": None, "grads": None}
            rec.calls.setdefault(rec.task, []).append(probe)
            rec.depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                rec.depth -= 1
            probe["out_dtypes"] = [str(t.dtype) for t in _out_tensors(out)]
            outs = [t for t in _out_tensors(out) if t.requires_grad]
            if outs and probe["grad_enabled"]:
                probe["cotangents"] = [None] * len(_out_tensors(out))
                for i, t in enumerate(_out_tensors(out)):
                    if t.requires_grad:
                        t.register_hook(lambda g, i=i: probe["cotangents"].__setitem__(i, g.detach().clone()))
            return out

        recorded.__wrapped__ = fn
        recorded.__name__ = getattr(fn, "__name__", name)
        return recorded


def call_with_grads(fn, probe) -> tuple[object, list | None]:
    """fn on fresh copies of the probe's inputs; with a recorded cotangent, also the inputs' gradients."""
    args, kwargs = clone_args(probe["args"]), clone_args(probe["kwargs"])
    ctx = torch.enable_grad() if probe.get("grad_enabled", True) else torch.no_grad()
    with ctx:
        out = fn(*args, **kwargs)
    return out, args, kwargs, _grads(out, (args, kwargs), probe)


def _grads(out, inputs, probe) -> list | None:
    """Gradients of the recorded cotangent w.r.t. the inputs that require grad; None where none flows."""
    cots = probe.get("cotangents")
    if not cots:
        return None
    leaves = [t for _, t in _leaves(inputs)]
    outs = _out_tensors(out)
    pairs = [(o, c) for o, c in zip(outs, cots) if c is not None and isinstance(o, torch.Tensor)
             and o.requires_grad and o.shape == c.shape]
    if not leaves:
        return []
    if not pairs:
        return [None] * len(leaves)
    grads = torch.autograd.grad([o for o, _ in pairs], leaves, [c.to(o.dtype) for o, c in pairs],
                                allow_unused=True)
    return [None if g is None else g.detach() for g in grads]


def _exec(code: str, ns: dict, out: io.StringIO, filename: str = "<cell>"):
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        exec(compile(_strip_magics(code), filename, "exec"), ns)  # noqa: S102 (trusted course code)


def record_fixture(source_nb, log=print) -> dict:
    """Run a source notebook's setup, solution and test cells (trusted) and record every probe."""
    import matplotlib

    from .cells import grade_id, is_readonly_cell, is_solution_cell, is_test_cell
    matplotlib.use("Agg")
    rec = _Recorder()
    ns: dict = {"__name__": "__main__"}
    sink = io.StringIO()
    fns: dict[str, list[str]] = {}
    tasks = []
    for cell in source_nb.cells:
        if cell.cell_type != "code":
            continue
        if is_readonly_cell(cell):
            _exec(cell.source, ns, sink)
        elif is_solution_cell(cell):
            _exec(cell.source, ns, sink)
            names = defined_names(cell.source)
            fns[grade_id(cell)] = names
            for n in names:
                if callable(ns.get(n)) and not isinstance(ns[n], type):
                    ns[n] = rec.wrap(n, ns[n])
        elif is_test_cell(cell):
            gid = grade_id(cell)
            tasks.append(gid)
            rec.task = gid
            torch.manual_seed(0)
            _exec(cell.source, ns, sink)
            rec.task = None
    # the solution's gradients for each recorded cotangent, on fresh copies of the inputs
    for probes in rec.calls.values():
        for probe in probes:
            if probe["cotangents"]:
                fn = ns[probe["fn"]].__wrapped__
                _, _, _, probe["grads"] = call_with_grads(fn, probe)
    names = sorted({n for v in fns.values() for n in v})
    return {"version": FIXTURE_VERSION, "digest": source_digest(source_nb), "tasks": tasks,
            "functions": names, "probes": rec.calls}


def worker_inputs(fixture: dict) -> dict:
    """What the sandboxed worker gets: the probes' inputs and cotangents, never the expected gradients."""
    return {"functions": fixture["functions"],
            "probes": {task: [{k: p[k] for k in ("fn", "args", "kwargs", "grad_enabled", "cotangents")}
                              for p in probes] for task, probes in fixture["probes"].items()}}


def load_fixture(path: Path) -> dict:
    """A fixture written by ``grade generate`` (from solutions/: course data, not learner data)."""
    return torch.load(path, weights_only=False)


# ------------------------------------------------------------------------------------------------ checking (trusted)
class ProbeMismatch(AssertionError):
    pass


def _same(a, b) -> bool:
    """Do the checker's arguments equal the recorded ones (up to the tolerance earlier results may carry)?"""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
            return False
        if a.dtype.is_floating_point or a.is_complex():
            wide = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64  # fp8 has no ops
            return bool(torch.allclose(a.detach().to(wide), b.detach().to(wide), rtol=ARG_RTOL, atol=ARG_ATOL,
                                       equal_nan=True))
        return bool(torch.equal(a.detach(), b.detach().to(a.dtype)))
    if isinstance(a, torch.nn.Module):
        return type(a) is type(b) and all(_same(x, y) for x, y in zip(a.state_dict().values(),
                                                                         b.state_dict().values()))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-6) or (math.isnan(a) and math.isnan(b))
    if is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    if type(a) is not type(b):
        return False
    try:
        if type(a).__eq__ is object.__eq__:  # no value equality (a tokenizer, ...): compare the attributes
            return not hasattr(a, "__dict__") or _same(vars(a), vars(b))
        eq = a == b
        return bool(eq) if isinstance(eq, bool) else True
    except Exception:  # noqa: BLE001 (an __eq__ that raises: same type is all we can say)
        return True


def _exception(name: str, message: str) -> BaseException:
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(message) if message else cls()
    return type(name, (Exception,), {})(message)


class _ReplayGrad(torch.autograd.Function):
    """Returns the worker's output tensors; backward hands back the worker's gradients for the inputs."""

    @staticmethod
    def forward(ctx, payload, *leaves):
        ctx.payload = payload
        return tuple(t.clone() for t in payload["outs"])

    @staticmethod
    def backward(ctx, *grad_outs):
        p = ctx.payload
        scale = 1.0
        cots = [c for c in (p["cotangents"] or []) if c is not None]
        if len(cots) == 1 and cots[0].numel() == 1 and len(grad_outs) == 1 and grad_outs[0] is not None:
            c = float(cots[0])
            scale = float(grad_outs[0]) / c if c else 1.0
        grads = []
        for g, leaf in zip(p["grads"], p["leaves"]):
            grads.append(None if g is None else (g * scale).to(leaf.dtype))
        return (None, *grads)


def _rebuild(out, tensors_iter):
    if isinstance(out, torch.Tensor):
        return next(tensors_iter)
    if isinstance(out, list):
        return [_rebuild(x, tensors_iter) for x in out]
    if isinstance(out, tuple):
        return tuple(_rebuild(x, tensors_iter) for x in out)
    if isinstance(out, dict):
        return {k: _rebuild(out[k], tensors_iter) for k in out}
    return out


def replay_function(name: str, task: str, probes: list[dict], results: list, used: list[int]):
    """A stand-in for the learner's ``name`` in the checker: the k-th call of the task gets the k-th result."""

    def replay(*args, **kwargs):
        k = used[0]
        used[0] += 1
        if k >= len(probes):
            raise ProbeMismatch(f"{task}: more calls than recorded (internal: regenerate the fixtures)")
        probe, res = probes[k], results[k] if k < len(results) else None
        if probe["fn"] != name:
            raise ProbeMismatch(f"{task}: call {k + 1} was recorded for {probe['fn']}, not {name}")
        if not (_same(list(args), list(probe["args"])) and _same(kwargs, probe["kwargs"])):
            raise ProbeMismatch(f"the inputs of {name}'s call {k + 1} in this test come from an earlier result "
                                "of yours, which differs from the expected one")
        if res is None:
            raise ProbeMismatch(f"{name} was not evaluated (the worker stopped before this test)")
        if "error" in res:
            raise _exception(res["error"], res.get("message", ""))
        for path, value in res.get("changed", []):   # arguments the learner's function changed in place
            target = _get(list(args) if path[0] == "args" else kwargs, path[1:])
            if isinstance(target, torch.Tensor) and target.shape == value.shape:
                with torch.no_grad():
                    target.copy_(value.to(target.dtype))
        out = res["value"]
        if isinstance(out, Unencodable):
            return out
        # float64 where the solution gives float32 is a correct answer: compare it in the solution's dtype
        want = probe.get("out_dtypes") or []
        got = _out_tensors(out)
        if len(want) == len(got) and any(t.dtype == torch.float64 and w == "torch.float32" for t, w in zip(got, want)):
            out = _rebuild(out, iter([t.float() if t.dtype == torch.float64 and w == "torch.float32" else t
                                      for t, w in zip(got, want)]))
        leaves = [t for _, t in _leaves((list(args), kwargs))]
        outs = _out_tensors(out)
        if res.get("grads") is not None and leaves and outs and torch.is_grad_enabled():
            grads = list(res["grads"]) + [None] * (len(leaves) - len(res["grads"]))
            payload = {"outs": outs, "grads": grads[:len(leaves)], "leaves": leaves,
                       "cotangents": probe.get("cotangents")}
            new = _ReplayGrad.apply(payload, *leaves)
            out = _rebuild(out, iter(new))
        return out

    replay.__name__ = name
    return replay


def compare_grads(task: str, probes: list[dict], results: list) -> str | None:
    """The first gradient of the learner's that differs from the solution's, as a message (None: all match)."""
    for k, (probe, res) in enumerate(zip(probes, results)):
        if probe.get("grads") is None or res is None or "error" in res:
            continue
        got = res.get("grads") or []
        paths = [p for p, _ in _leaves((list(probe["args"]), probe["kwargs"]))]
        for j, want in enumerate(probe["grads"]):
            name = _path_name(probe["fn"], paths[j] if j < len(paths) else (j,))
            g = got[j] if j < len(got) else None
            if want is None:
                continue
            if g is None:
                if want.abs().max() > 0:
                    return (f"no gradient reaches {name} through your {probe['fn']} (call {k + 1}): is part of it "
                            "computed under torch.no_grad(), detached, or built from .item() values?")
                continue
            if g.shape != want.shape or not torch.allclose(g.to(want.dtype), want, rtol=GRAD_RTOL, atol=GRAD_ATOL):
                diff = (g.to(want.dtype) - want).abs().max().item() if g.shape == want.shape else float("nan")
                return (f"the gradient of {name} through your {probe['fn']} (call {k + 1}) differs from the "
                        f"solution's (largest difference {diff:.3g}): a detach() or no_grad in the wrong place?")
    return None


def _path_name(fn, path) -> str:
    parts = [str(p) for p in path if p != "args"]
    if "param" in parts:
        i = parts.index("param")
        return f"argument {parts[0]}'s parameter {'.'.join(parts[i + 1:])}"
    return f"argument {parts[0]}" + "".join(f"[{p}]" for p in parts[1:]) if parts else "an input"


def test_filename(gid: str) -> str:
    """The file name a test cell's code is compiled under: tracebacks then point into that cell."""
    return f"<test {gid}>"


def run_test_cell_in(source_nb, fixture: dict, results: dict, skip: set | None = None) -> dict:
    """Run the source's cells (trusted) in order, each test cell with the learner's functions replaced by
    replays of the worker's results; {grade_id: (the exception it raised or None, the test cell's code)}."""
    from .cells import grade_id, is_readonly_cell, is_solution_cell, is_test_cell

    ns: dict = {"__name__": "__main__"}
    sink = io.StringIO()
    verdicts = {}
    for cell in source_nb.cells:
        if cell.cell_type != "code":
            continue
        if is_readonly_cell(cell) or is_solution_cell(cell):
            _exec(cell.source, ns, sink)
        elif is_test_cell(cell):
            gid = grade_id(cell)
            probes = fixture["probes"].get(gid, [])
            used = [0]
            res = results.get(gid) or []
            for name in fixture["functions"]:
                ns[name] = replay_function(name, gid, probes, res, used)
            torch.manual_seed(0)
            try:
                _exec(cell.source, ns, sink, test_filename(gid))
                if used[0] < len(probes):
                    raise ProbeMismatch(f"{gid}: fewer calls than recorded (internal: regenerate the fixtures)")
                verdicts[gid] = (None, cell.source)
            except BaseException as e:
                if isinstance(e, KeyboardInterrupt):
                    raise
                verdicts[gid] = (e, cell.source)
    return verdicts


def ensure_fixture(source: Path, source_nb, log=None) -> dict:
    """The source's fixture, recorded now (from solutions/ only, trusted) when it is missing or out of date."""
    path = fixture_path(source)
    if path.is_file():
        fixture = load_fixture(path)
        if fixture.get("version") == FIXTURE_VERSION and fixture.get("digest") == source_digest(source_nb):
            return fixture
    if log:
        log(f"recording the probes of {Path(source).name} from the solution (once) ...")
    fixture = record_fixture(source_nb)
    save_fixture(fixture, path)
    return fixture


def save_fixture(fixture: dict, path: Path) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(fixture, tmp)
    os.replace(tmp, path)  # atomic: a grader running at the same time never reads half a file


def fixture_summary(fixture: dict) -> str:
    n = sum(len(v) for v in fixture["probes"].values())
    g = sum(1 for v in fixture["probes"].values() for p in v if p.get("grads") is not None)
    return json.dumps({"tasks": len(fixture["tasks"]), "probes": n, "with_gradients": g})
