"""``python -m dsv3_edu.check``: one command that measures every GPU path of the course (docs/gpu_check.md).

    python -m dsv3_edu.check --out results/check.json        # on a CUDA machine: <= 8 minutes
    python -m dsv3_edu.check --quick                          # small sizes (what CI runs on CPU)

Parts, each guarded (an exception or a time-out is reported and the next part still runs) and with its own
time budget:

    env          device, driver, CUDA, torch / triton / transformers versions
    kernels      the Triton kernels (act_quant, weight_dequant, fp8_gemm), compiled on a GPU or on the CPU
                 interpreter, against the torch reference: the interpreter tests of tests/test_fp8.py (every
                 test that uses the ``kernels`` fixture) run on this device, plus special values (NaN, +-inf,
                 -0.0, all-zero tiles) compared here, NaN == NaN
    gemm         TFLOP/s of fp8_gemm_triton vs torch's scaled_mm (block-wise scales where this torch and GPU
                 have them, else per-row) vs bf16 torch.matmul at DeepSeek-V3 shapes (GPU only)
    train        training-step tokens/s of the ``small`` preset with bf16 autocast, MFU against this GPU's
                 measured bf16 matmul peak, and the ratio to transformers' DeepseekV3ForCausalLM (same config,
                 same weights, same batches, same process)
    ep           the expert-parallel MoE layer on NCCL (gloo on CPU), outputs and gradients vs one process
    pipeline     the pipeline executor (1F1B, ZB1P, DualPipe, DualPipeV) on NCCL/gloo vs one process
    ddp          data-parallel training (dsv3_edu.distributed) vs one process at the same global batch
    speculative  MTP speculative decoding vs plain greedy: identical tokens, speed-up

On a machine without a GPU every part that can run does (interpreter kernels, gloo, fp32, tiny sizes) and the
GPU-only ones are reported as ``skipped``. Figures are measured, never typed in: the JSON holds what ran.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import torch

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "error", "timeout", "skipped")   # failed: ran, a result was wrong; error: raised
DSV3_GEMM_SHAPES = [(4096, 7168, 2048), (4096, 2048, 7168), (4096, 7168, 7168)]   # (M tokens, N out, K in)
REPO = Path(__file__).resolve().parent.parent


# ============================================================================ settings


@dataclass
class Settings:
    """Sizes and budgets of one run; ``for_device`` picks them."""
    device: str                      # "cuda" or "cpu"
    quick: bool
    gemm_shapes: list = field(default_factory=lambda: list(DSV3_GEMM_SHAPES))
    train_preset: str = "small"
    train_batch: int = 16
    train_seq: int = 512
    train_trials: int = 3
    train_steps_per_trial: int = 3
    dist_world: int = 1              # processes for ep / pipeline / ddp
    ep_preset: str = "small"
    spec_preset: str = "tiny"
    spec_train_steps: int = 300
    spec_new_tokens: int = 200
    spec_batch: int = 32
    spec_seq: int = 128
    kernel_test_filter: str | None = None   # a pytest -k expression to run only some kernel tests (CI)
    budgets: dict = field(default_factory=dict)   # part -> seconds

    @classmethod
    def for_device(cls, device: str, quick: bool = False) -> Settings:
        budgets = {"env": 30, "kernels": 150, "gemm": 120, "train": 110, "ep": 45, "pipeline": 45, "ddp": 60,
                   "speculative": 60}
        if device == "cuda":
            s = cls(device, quick, dist_world=max(1, min(torch.cuda.device_count(), 4)), budgets=budgets)
            if quick:
                s.gemm_shapes, s.train_batch, s.train_seq = [(1024, 2048, 2048)], 4, 256
                s.spec_train_steps, s.spec_new_tokens = 100, 64
            return s
        # CPU: what can run here, at sizes that take seconds (fp32, gloo, the Triton interpreter)
        s = cls(device, quick, gemm_shapes=[], train_preset="nano", train_batch=2, train_seq=32, train_trials=2,
                train_steps_per_trial=1, dist_world=2, ep_preset="nano", spec_preset="nano", spec_train_steps=60,
                spec_new_tokens=24, spec_batch=8, spec_seq=32, budgets={k: 3 * v for k, v in budgets.items()})
        if quick:
            s.dist_world, s.spec_train_steps, s.spec_new_tokens = 2, 40, 16
        return s


# ============================================================================ the runner


@dataclass
class PartResult:
    status: str = "ok"
    seconds: float = 0.0
    budget_s: float = 0.0
    metrics: dict = field(default_factory=dict)   # name -> number / str / bool
    goals: list = field(default_factory=list)     # {"name", "value", "target", "met"}
    note: str = ""
    error: str | None = None

    def to_dict(self) -> dict:
        d = {"status": self.status, "seconds": round(self.seconds, 3), "budget_s": self.budget_s,
             "metrics": self.metrics, "goals": self.goals, "note": self.note, "error": self.error}
        return json.loads(json.dumps(d, default=_plain))     # tensors / numpy scalars -> plain numbers


def _plain(v):
    """JSON fallback for a metric: a one-element tensor or numpy scalar becomes its number, else its text."""
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        return v.item()
    return str(v)


class Skip(Exception):
    """Raised by a part that cannot run here (e.g. needs a GPU): reported as ``skipped`` with the reason."""


class PartTimeout(Exception):
    pass


def goal(name: str, value: float, target: float, op: str = ">=") -> dict:
    met = value >= target if op == ">=" else value <= target
    return {"name": name, "value": value, "target": f"{op} {target:g}", "met": bool(met)}


@contextmanager
def _time_limit(seconds: float):
    """Raise PartTimeout in the main thread after ``seconds`` (SIGALRM; a no-op where there is none)."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def on_alarm(signum, frame):
        raise PartTimeout(f"time budget of {seconds:g} s exceeded")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_part(name: str, fn: Callable, s: Settings, ctx: dict, left_s: float = math.inf) -> PartResult:
    """Run one part under its budget (and the ``left_s`` seconds left of the whole check); every outcome,
    exceptions included, becomes a PartResult."""
    res = PartResult(budget_s=round(min(s.budgets.get(name, 60), left_s), 1))
    if left_s < 5:
        res.status, res.note = "skipped", "the check's total time budget is used up"
        return res
    t0 = time.perf_counter()
    try:
        with _time_limit(res.budget_s):
            fn(s, res, ctx)
    except Skip as e:
        res.status, res.note = "skipped", str(e)
    except PartTimeout as e:
        res.status, res.error = "timeout", str(e)
    except Exception as e:   # noqa: BLE001  (a part's failure is a result, not a crash of the check)
        res.status = "error"
        res.error = f"{type(e).__name__}: {e}"[:2000]
        res.metrics["traceback_tail"] = traceback.format_exc()[-1500:]
    res.seconds = time.perf_counter() - t0
    wrong = [f"{k}={v}" for k, v in res.metrics.items() if k.endswith("_mismatch") and v]
    if res.status == "ok" and wrong:
        res.status = "failed"
        res.note = "; ".join(filter(None, [res.note, "mismatch: " + ", ".join(wrong)]))
    return res


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _need_cuda(s: Settings, what: str) -> None:
    if s.device != "cuda":
        raise Skip(f"needs a CUDA GPU ({what}); none here")


# ============================================================================ parts


def part_env(s: Settings, res: PartResult, ctx: dict) -> None:
    m = res.metrics
    m["python"] = platform.python_version()
    m["platform"] = platform.platform()
    m["cpu"] = platform.processor() or platform.machine()
    m["cpu_count"] = os.cpu_count()
    m["torch"] = torch.__version__
    for mod in ("triton", "transformers"):
        try:
            m[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            m[mod] = f"unavailable ({type(e).__name__})"
    m["device"] = s.device
    m["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        m["gpu"] = p.name
        m["gpu_count"] = torch.cuda.device_count()
        m["gpu_memory_gib"] = round(p.total_memory / 2 ** 30, 1)
        m["compute_capability"] = f"{p.major}.{p.minor}"
        m["cuda_runtime"] = torch.version.cuda
        with suppress(Exception):
            v = torch.cuda.nccl.version()                     # a tuple in recent torch, an int in old ones
            m["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)
            m["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            m["driver"] = None


# ---------------------------------------------------------------------------------------------- kernels

KERNEL_TEST_FILE = "tests/test_fp8.py"
_SELECT_ENV = "DSV3_CHECK_SELECT_KERNEL_TESTS"


def pytest_collection_modifyitems(config, items):
    """pytest hook, active only when the check runs the kernel tests (``-p dsv3_edu.check`` and the env var):
    keep the tests that use the ``kernels`` fixture, i.e. every Triton kernel test, whatever its name."""
    if os.environ.get(_SELECT_ENV) != "1":
        return
    keep = [it for it in items if "kernels" in getattr(it, "fixturenames", ())]
    config.hook.pytest_deselected(items=[it for it in items if it not in keep])
    items[:] = keep


def run_kernel_tests(timeout_s: float, select: str | None = None) -> dict:
    """Run the Triton kernel tests of tests/test_fp8.py on this machine's device; parse their JUnit XML."""
    import xml.etree.ElementTree as ET
    test_file = REPO / KERNEL_TEST_FILE
    if not test_file.is_file():
        raise Skip(f"{KERNEL_TEST_FILE} not found (the check runs the kernel tests from a source checkout)")
    with tempfile.TemporaryDirectory() as d:
        xml = Path(d) / "kernels.xml"
        env = {**os.environ, _SELECT_ENV: "1", "PYTHONPATH": os.pathsep.join(
            [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        cmd = [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider", "-p",
               "dsv3_edu.check", f"--junitxml={xml}", "--rootdir", str(REPO), "-o", "addopts="]
        cmd += ["-k", select] if select else []
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
        if not xml.is_file():
            raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}): {proc.stdout[-800:]}"
                               f"{proc.stderr[-800:]}")
        cases = ET.parse(xml).getroot().iter("testcase")
        out = {"passed": [], "failed": [], "skipped": []}
        for c in cases:
            name = c.get("name")
            if c.find("failure") is not None or c.find("error") is not None:
                el = c.find("failure") if c.find("failure") is not None else c.find("error")
                out["failed"].append(f"{name}: {(el.get('message') or '')[:300]}")
            elif c.find("skipped") is not None:
                out["skipped"].append(name)
            else:
                out["passed"].append(name)
    return out


def special_value_inputs() -> dict[str, torch.Tensor]:
    """Activations with the special values, one kind per row and tile (4 rows x 2 tiles of 128)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 256, generator=g)
    x[0, 5] = float("nan")                       # a NaN in tile (0, 0)
    x[1, 3] = float("inf")                       # +inf in tile (1, 0)
    x[2, 130] = float("-inf")                    # -inf in tile (2, 1)
    x[3, :128] = -0.0                            # a tile of -0.0
    x[4] = 0.0                                   # an all-zero row
    x[5, 7] = 1e-30                              # a tiny tile: amax far below the smallest scale
    x[5, 8:128] = 0.0
    return {"nan": x[0:1], "pos_inf": x[1:2], "neg_inf": x[2:3], "neg_zero": x[3:4], "zero": x[4:5],
            "tiny": x[5:6], "all": x}


def same_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: equal bits (so -0.0 != 0.0), or both NaN (any NaN payload)."""
    a, b = a.detach().cpu().float(), b.detach().cpu().float()
    return (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())


def _outcome(fn):
    """(result, None) or (None, the exception's type name): special inputs may be refused with an error."""
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001
        return None, type(e).__name__


def compare_special_values(device: str) -> dict:
    """act_quant (torch) vs act_quant_triton on special values, and the GEMM on their quantized tiles.

    Returns {case: number of differing elements} over quantized values, scales and GEMM outputs. Whatever the
    documented behaviour is, both paths must do the same: equal results, or both raising the same exception
    type (a case where only one raises counts as 1).
    """
    from .fp8 import act_quant, block_scaled_matmul, weight_quant
    from .fp8.kernels import act_quant_triton, fp8_gemm_triton
    out = {}
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(1)) * 0.05
    wq, ws = weight_quant(w)
    for name, x in special_value_inputs().items():
        for fmt in ("e4m3", "e5m2"):
            ref, e_ref = _outcome(lambda x=x, fmt=fmt: act_quant(x, fmt=fmt))
            got, e_got = _outcome(lambda x=x, fmt=fmt: act_quant_triton(x.to(device), fmt=fmt))
            if e_ref or e_got:
                out[f"{name}_{fmt}"] = int(e_ref != e_got)
                continue
            (q, sc), (qt, st) = ref, got
            bad = int((~same_values(q, qt)).sum()) + int((~same_values(sc, st)).sum())
            if fmt == "e4m3":   # the GEMM: same inputs to both paths (the torch quantization)
                c_ref, e_ref = _outcome(lambda q=q, sc=sc: block_scaled_matmul(q, sc, wq, ws))
                c_got, e_got = _outcome(lambda q=q, sc=sc: fp8_gemm_triton(
                    q.to(device), sc.to(device), wq.to(device), ws.to(device), out_dtype=torch.float32))
                if e_ref or e_got:
                    bad += int(e_ref != e_got)
                else:
                    bad += int((~torch.isclose(c_got.cpu(), c_ref, rtol=1e-5, atol=1e-6, equal_nan=True)).sum())
            out[f"{name}_{fmt}"] = bad
    return out


def part_kernels(s: Settings, res: PartResult, ctx: dict) -> None:
    from .fp8 import has_triton
    if not has_triton():
        raise Skip("triton is not installed")
    from .fp8 import kernels
    m = res.metrics
    m["mode"] = "interpreter (CPU)" if kernels.INTERPRET else f"compiled ({torch.cuda.get_device_name()})"
    if not kernels.INTERPRET and s.device == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        m["fp8_dot_supported"] = False     # tl.dot on FP8 needs sm_89+: the GEMM tests will fail, say why
    t0 = time.perf_counter()
    tests = run_kernel_tests(max(10.0, res.budget_s - 20), s.kernel_test_filter)
    m["kernel_tests_seconds"] = round(time.perf_counter() - t0, 2)
    m["kernel_tests_passed"] = len(tests["passed"])
    m["kernel_tests_skipped"] = len(tests["skipped"])
    m["kernel_tests_mismatch"] = len(tests["failed"])
    if tests["failed"]:
        m["kernel_tests_failures"] = tests["failed"]
    if not tests["passed"] and not tests["failed"]:
        raise RuntimeError(f"no kernel test ran (skipped: {tests['skipped']})")
    special = compare_special_values("cpu" if kernels.INTERPRET else "cuda")
    m["special_values_differing_elements"] = special
    m["special_values_mismatch"] = sum(special.values())
    res.goals.append(goal("kernel tests passing (all of them)", len(tests["passed"]),
                          len(tests["passed"]) + len(tests["failed"])))
    res.goals.append(goal("special-value elements differing torch vs Triton", sum(special.values()), 0, "<="))


# ---------------------------------------------------------------------------------------------- gemm


def bench_cuda(fn: Callable, reps: int = 20) -> float:
    """Median seconds of ``fn()`` on the GPU (CUDA events after warm-up; L2 is not flushed)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def bf16_matmul_peak(n: int = 8192) -> float:
    """This GPU's measured bf16 matmul TFLOP/s on an n x n x n product (the MFU denominator)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n ** 3 / bench_cuda(lambda: a @ b, reps=10) / 1e12


def scaled_mm_blockwise(a, a_s, b, b_s):
    """torch's block-wise scaled GEMM (1x128 tiles for A, 128x128 blocks for B), cuBLASLt, if this torch has it.

    a (M, K) fp8 with a_s (M, K/128); b (N, K) fp8 with b_s (N/128, K/128). The scale layouts cuBLAS wants:
    a_s column-major (M, K/128); b_s as (round_up(K/128, 4), N/128), column-major.
    """
    from torch.nn.functional import ScalingType, SwizzleType, scaled_mm
    K, N = a.size(1), b.size(0)
    kb = K // 128
    sa = a_s.t().contiguous().t()                                      # (M, kb), stride (1, M)
    L4 = 4 * math.ceil(kb / 4)
    sb = torch.zeros(N // 128, L4, device=b.device)
    sb[:, :kb] = b_s
    sb = sb.t()                                                        # (L4, N/128), stride (1, L4)
    return scaled_mm(a, b.t(), [sa], [ScalingType.BlockWise1x128], [sb], [ScalingType.BlockWise128x128],
                     [SwizzleType.NO_SWIZZLE], [SwizzleType.NO_SWIZZLE], None, torch.bfloat16)


def scaled_mm_rowwise(a, a_row, b, b_row):
    """torch._scaled_mm with one scale per row of A and per row of B (= per output column)."""
    return torch._scaled_mm(a, b.t(), scale_a=a_row, scale_b=b_row.t(), out_dtype=torch.bfloat16)


def pick_scaled_mm() -> tuple[str, Callable | None]:
    """'blockwise' if torch's block-wise scaled_mm runs here and matches the reference, else 'rowwise'."""
    from .fp8 import act_quant, block_scaled_matmul, weight_quant
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(256, 512, generator=g), torch.randn(384, 512, generator=g) * 0.05
    (aq, sa), (wq, sw) = act_quant(a), weight_quant(w)
    ref = block_scaled_matmul(aq, sa, wq, sw)
    try:
        got = scaled_mm_blockwise(aq.cuda(), sa.cuda(), wq.cuda(), sw.cuda()).float().cpu()
        if torch.allclose(got, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item()):
            return "blockwise", None
        return "rowwise", "block-wise scaled_mm ran but disagreed with the reference"
    except Exception as e:  # noqa: BLE001
        return "rowwise", f"block-wise scaled_mm unavailable: {type(e).__name__}: {str(e)[:200]}"


def gemm_times(a: torch.Tensor, w: torch.Tensor, mode: str) -> tuple[float, float, float]:
    """Seconds of y = a @ w^T three ways: fp8_gemm_triton, torch's scaled_mm (``mode``), bf16 matmul."""
    from .fp8 import act_quant, per_row_quant, weight_quant
    from .fp8.kernels import fp8_gemm_triton
    (aq, sa), (wq, sw) = act_quant(a), weight_quant(w)
    t_tri = bench_cuda(lambda: fp8_gemm_triton(aq, sa, wq, sw, out_dtype=torch.bfloat16))
    if mode == "blockwise":
        t_smm = bench_cuda(lambda: scaled_mm_blockwise(aq, sa, wq, sw))
    else:
        (ar, sar), (wr, swr) = per_row_quant(a), per_row_quant(w)
        t_smm = bench_cuda(lambda: scaled_mm_rowwise(ar, sar, wr, swr))
    return t_tri, t_smm, bench_cuda(lambda: a @ w.t())


def part_gemm(s: Settings, res: PartResult, ctx: dict) -> None:
    _need_cuda(s, "FP8 tensor cores")
    if torch.cuda.get_device_capability() < (8, 9):
        cap = "".join(map(str, torch.cuda.get_device_capability()))
        raise Skip(f"FP8 GEMMs need sm_89+ (Ada/Hopper); this GPU is sm_{cap}")
    mode, why = pick_scaled_mm()
    res.metrics["scaled_mm_scaling"] = mode
    if why:
        res.note = why
    ratios = []
    for M, N, K in s.gemm_shapes:
        g = torch.Generator(device="cuda").manual_seed(0)
        a = torch.randn(M, K, device="cuda", generator=g, dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", generator=g, dtype=torch.bfloat16) * 0.05
        t_tri, t_smm, t_bf16 = gemm_times(a, w, mode)
        flops = 2 * M * N * K
        key = f"M{M}_N{N}_K{K}"
        res.metrics[f"{key}_triton_tflops"] = round(flops / t_tri / 1e12, 1)
        res.metrics[f"{key}_scaled_mm_tflops"] = round(flops / t_smm / 1e12, 1)
        res.metrics[f"{key}_bf16_matmul_tflops"] = round(flops / t_bf16 / 1e12, 1)
        ratios.append(t_smm / t_tri)
        res.goals.append(goal(f"Triton FP8 GEMM / scaled_mm ({mode}) at {M}x{N}x{K}", round(t_smm / t_tri, 3), 0.7))
    res.metrics["triton_vs_scaled_mm_min"] = round(min(ratios), 3)


# ---------------------------------------------------------------------------------------------- train


def _train_step(model, opt, x, y, device, ours: bool) -> None:
    from .runtime import autocast
    with autocast(device):
        if ours:
            loss = model(x, y).loss
        else:
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten._grouped_mm`` (the experts' one-kernel GEMM), which torch's FlopCounterMode does not count:
    every row meets one group's matrix, so 2 * rows * in * out whatever the split. Forward and dX: (T, K) x
    (E, K, N); dW: (K, T) x (T, N) grouped along T."""
    if len(a_shape) == 2 and len(b_shape) == 3:
        return 2 * a_shape[0] * a_shape[1] * b_shape[2]
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * math.prod(out_shape) * a_shape[-1]         # batched (E, M, K) x (E, K, N)


def train_vs_hf(preset: str = "tiny", batch_size: int = 8, seq_len: int = 128, trials: int = 5,
                steps_per_trial: int = 3, device: str | torch.device = "auto", count_flops: bool = True) -> dict:
    """Training-step throughput of dsv3_edu vs transformers' DeepseekV3ForCausalLM at an identical config.

    Both get the same weights (converted with dsv3_edu.hf), the same batch and the same numerics (bf16
    autocast on CUDA, float32 on CPU), no MTP and no balance loss (transformers has neither), AdamW. Trials
    alternate between the models so machine noise hits both alike; returns median tokens/s of each, their
    ratio, the first loss of each on the same batch, and the FLOPs of one of our steps as counted by
    torch.utils.flop_counter (matmuls and attention, forward + backward).
    """
    import transformers
    from transformers import DeepseekV3ForCausalLM

    from .config import get_config
    from .hf import save_hf
    from .model import Transformer
    from .runtime import get_device
    device = get_device(device) if isinstance(device, str) else device
    cfg = get_config(preset, n_mtp=0, seq_aux_alpha=0.0)
    torch.manual_seed(0)
    ours = Transformer(cfg)
    with tempfile.TemporaryDirectory() as d:
        save_hf(ours, d)
        theirs = DeepseekV3ForCausalLM.from_pretrained(d, dtype=torch.float32)
    ours, theirs = ours.to(device).train(), theirs.to(device).train()
    models = {"dsv3_edu": (ours, True), "transformers": (theirs, False)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95)) for k, (m, _) in models.items()}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), generator=g)
    x, y = x[:, :-1].to(device), x[:, 1:].to(device)
    with torch.no_grad():    # same numerics: the first loss of each on the same batch
        l_ours = ours(x, y).main_loss.item()
        lt = theirs(input_ids=x).logits
        l_theirs = torch.nn.functional.cross_entropy(lt.float().view(-1, lt.size(-1)), y.reshape(-1)).item()
    for name, (m, is_ours) in models.items():   # warm-up
        _train_step(m, opts[name], x, y, device, is_ours)
    flops = None
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode
        extra = {torch.ops.aten._grouped_mm: grouped_mm_flops} if hasattr(torch.ops.aten, "_grouped_mm") else {}
        with FlopCounterMode(display=False, custom_mapping=extra) as fc:
            _train_step(ours, opts["dsv3_edu"], x, y, device, True)
        flops = fc.get_total_flops()
    tps = {k: [] for k in models}
    tokens = batch_size * seq_len * steps_per_trial
    for _ in range(trials):
        for name, (m, is_ours) in models.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_trial):
                _train_step(m, opts[name], x, y, device, is_ours)
            _sync(device)
            tps[name].append(tokens / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in tps.items()}
    return {"preset": preset, "batch_size": batch_size, "seq_len": seq_len, "trials": trials,
            "steps_per_trial": steps_per_trial, "device": str(device), "tokens_per_s": med, "trials_tokens_per_s": tps,
            "ratio": med["dsv3_edu"] / med["transformers"],
            "first_loss": {"dsv3_edu": l_ours, "transformers": l_theirs},
            "flops_per_step": flops, "transformers_version": transformers.__version__,
            "hf_experts_implementation": getattr(theirs.config, "_experts_implementation", None),
            "hf_attention": getattr(theirs.config, "_attn_implementation", None)}


def part_train(s: Settings, res: PartResult, ctx: dict) -> None:
    r = train_vs_hf(s.train_preset, s.train_batch, s.train_seq, s.train_trials, s.train_steps_per_trial, s.device)
    m = res.metrics
    m.update({"preset": r["preset"], "tokens_per_step": r["batch_size"] * r["seq_len"],
              "dtype": "bf16 autocast" if s.device == "cuda" else "fp32",
              "tokens_per_s": round(r["tokens_per_s"]["dsv3_edu"], 1),
              "hf_tokens_per_s": round(r["tokens_per_s"]["transformers"], 1),
              "ratio_vs_transformers": round(r["ratio"], 3),
              "first_loss": round(r["first_loss"]["dsv3_edu"], 5),
              "hf_first_loss": round(r["first_loss"]["transformers"], 5),
              "hf_experts_implementation": r["hf_experts_implementation"], "hf_attention": r["hf_attention"]})
    m["first_loss_mismatch"] = abs(r["first_loss"]["dsv3_edu"] - r["first_loss"]["transformers"]) > 1e-2
    flops_per_token = r["flops_per_step"] / m["tokens_per_step"]
    m["flops_per_token_counted"] = flops_per_token
    achieved = flops_per_token * r["tokens_per_s"]["dsv3_edu"]
    m["achieved_tflops"] = round(achieved / 1e12, 3)
    if s.device == "cuda":
        peak = ctx.get("bf16_peak_tflops") or bf16_matmul_peak()
        ctx["bf16_peak_tflops"] = peak
        m["bf16_matmul_peak_tflops"] = round(peak, 1)
        m["mfu"] = round(achieved / (peak * 1e12), 4)
        res.goals.append(goal("training MFU (bf16, vs measured matmul peak)", m["mfu"], 0.35))
    else:
        res.note = "CPU: fp32, tiny sizes; MFU is a GPU figure (not computed here)"
    res.goals.append(goal("tokens/s dsv3_edu / transformers", m["ratio_vs_transformers"], 1.0))


# ---------------------------------------------------------------------------------------------- distributed


def _backend(s: Settings) -> str:
    return "nccl" if s.device == "cuda" else "gloo"


def part_ep(s: Settings, res: PartResult, ctx: dict) -> None:
    from .config import get_config
    from .parallel.ep import ep_check_worker
    from .parallel.launch import spawn_run
    cfg = get_config(s.ep_preset)
    world = s.dist_world
    while cfg.n_routed_experts % world:
        world -= 1
    tol = 1e-4 if s.device == "cuda" else 1e-5
    results = spawn_run(world, ep_check_worker, cfg.to_dict(), 2, 32, 0, backend=_backend(s),
                        timeout_s=max(30.0, res.budget_s - 10))
    errs = {k: max(r["err"][k] for r in results) for k in results[0]["err"]}
    res.metrics.update({"world_size": world, "backend": results[0]["backend"], "device": results[0]["device"],
                        "preset": s.ep_preset, **{f"max_rel_err_{k}": float(f"{v:.3e}") for k, v in errs.items()}})
    worst = max(errs.values())
    res.metrics["ep_mismatch"] = worst > tol
    res.goals.append(goal(f"EP ({results[0]['backend']}, {world} ranks) vs single process, max rel. error",
                          float(f"{worst:.3e}"), tol, "<="))


def part_pipeline(s: Settings, res: PartResult, ctx: dict) -> None:
    from .parallel.launch import spawn_run
    from .parallel.pipeline.executor import max_grad_error, pipeline_steps
    world = s.dist_world
    methods = ["1f1b", "zb1p", "dualpipev"] + (["dualpipe"] if world % 2 == 0 else [])
    n_micro = {"1f1b": world + 2, "zb1p": world + 3, "dualpipe": 2 * world + 2, "dualpipev": 2 * world + 1}
    results = spawn_run(world, pipeline_steps, methods, n_micro, dim=16, seed=7, backend=_backend(s),
                        timeout_s=max(30.0, res.budget_s - 10))
    tol = 1e-4 if s.device == "cuda" else 1e-5
    worst = 0.0
    for mth in methods:
        n_stages = 2 * world if mth == "dualpipev" else world
        e_loss, e_grad = 0.0, 0.0
        for r in results:
            dl, dg = max_grad_error(r[mth], n_micro[mth], n_stages, dim=16, seed=7)
            e_loss, e_grad = max(e_loss, dl), max(e_grad, dg)
        res.metrics[f"{mth}_loss_err"] = float(f"{e_loss:.3e}")
        res.metrics[f"{mth}_grad_err"] = float(f"{e_grad:.3e}")
        worst = max(worst, e_loss, e_grad)
    res.metrics.update({"world_size": world, "backend": _backend(s), "methods": ",".join(methods)})
    if world % 2:
        res.note = f"DualPipe needs an even number of ranks: not run with {world}"
    res.metrics["pipeline_mismatch"] = worst > tol
    res.goals.append(goal(f"pipeline ({_backend(s)}, {world} ranks) vs single process, max abs. error",
                          float(f"{worst:.3e}"), tol, "<="))


def part_ddp(s: Settings, res: PartResult, ctx: dict) -> None:
    try:
        from .distributed import ddp_check
    except ImportError as e:
        raise Skip(f"data-parallel training not available in this version: {e}") from None
    r = ddp_check(world_size=s.dist_world, backend=_backend(s), quick=s.quick or s.device != "cuda",
                  timeout_s=max(30.0, res.budget_s - 10))
    res.metrics.update(r)
    res.metrics["biases_mismatch"] = not r["same_biases_on_all_ranks"]
    tol = r.get("tolerance", 1e-5)
    worst = max(r["max_loss_err"], r["max_weight_err"])
    res.metrics["ddp_mismatch"] = worst > tol
    res.goals.append(goal(f"DDP ({r['backend']}, {r['world_size']} ranks) vs single process, max error",
                          float(f"{worst:.3e}"), tol, "<="))


# ---------------------------------------------------------------------------------------------- speculative


def synthetic_stream(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """A learnable token stream: a fixed random walk through a 'sentence' of 29 tokens with 10% noise."""
    g = torch.Generator().manual_seed(seed)
    sentence = torch.randperm(vocab, generator=g)[:29]
    base = sentence[torch.arange(n) % 29]
    noise = torch.rand(n, generator=g) < 0.1
    return torch.where(noise, torch.randint(0, vocab, (n,), generator=g), base).int()


def part_speculative(s: Settings, res: PartResult, ctx: dict) -> None:
    from .data import TokenDataset
    from .generate import generate, speculative_generate
    from .train import TrainConfig, train
    cfg_probe = TrainConfig(preset=s.spec_preset)
    vocab = cfg_probe.model_config().vocab_size
    stream = synthetic_stream(40_000, vocab)
    ds = TokenDataset(stream[:36_000], stream[36_000:])
    tc = TrainConfig(preset=s.spec_preset, steps=s.spec_train_steps, batch_size=s.spec_batch, seq_len=s.spec_seq,
                     warmup_steps=10, eval_every=10 ** 9, eval_batches=1, log_every=max(1, s.spec_train_steps),
                     out_dir=None, plots=False, device=s.device)
    model = train(tc, dataset=ds, progress=False).model
    device = next(model.parameters()).device
    prompt = stream[36_000:36_016].long()[None].to(device)
    n_new = min(s.spec_new_tokens, model.cfg.max_seq_len - prompt.size(1) - 1)
    generate(model, prompt, 4, temperature=0)                  # warm-up (kernels, caches)
    speculative_generate(model, prompt, 4)
    times = {"plain": [], "speculative": []}
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        plain = generate(model, prompt, n_new, temperature=0)
        _sync(device)
        times["plain"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        spec, st = speculative_generate(model, prompt, n_new)
        _sync(device)
        times["speculative"].append(time.perf_counter() - t0)
    tp, ts = statistics.median(times["plain"]), statistics.median(times["speculative"])
    m = res.metrics
    m.update({"preset": s.spec_preset, "train_steps": s.spec_train_steps,
              "train_tokens": s.spec_train_steps * s.spec_batch * s.spec_seq, "new_tokens": n_new,
              "device": str(device), "acceptance_rate": round(st.acceptance_rate, 4),
              "tokens_per_forward": round(st.tokens_per_forward, 3), "plain_s": round(tp, 4),
              "speculative_s": round(ts, 4), "speedup": round(tp / ts, 3),
              "identical_to_greedy": bool(torch.equal(plain, spec))})
    m["outputs_mismatch"] = not m["identical_to_greedy"]
    res.note = "model trained here for a few steps on a synthetic, learnable stream (acceptance is high by design)"
    res.goals.append(goal("speculative tokens identical to greedy", int(m["identical_to_greedy"]), 1))
    res.goals.append(goal("speed-up over plain greedy", m["speedup"], 1.0))


PARTS: dict[str, Callable] = {"env": part_env, "kernels": part_kernels, "gemm": part_gemm, "train": part_train,
                              "ep": part_ep, "pipeline": part_pipeline, "ddp": part_ddp,
                              "speculative": part_speculative}


# ============================================================================ report


def run_check(parts: list[str] | None = None, quick: bool = False, device: str | None = None,
              progress: bool = True, part_fns: dict[str, Callable] | None = None,
              settings: Settings | None = None, max_minutes: float = 8.0) -> dict:
    """Run the parts (default: all) within ``max_minutes`` in all and return the JSON-ready report."""
    fns = part_fns or PARTS
    names = parts or list(fns)
    unknown = [n for n in names if n not in fns]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; choose from {list(fns)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch.cuda.is_available() is False")
    s = settings or Settings.for_device(device, quick)
    # the Triton kernels choose compiled vs interpreter before anything (transformers) imports triton; without
    # triton, or with triton imported too early, the kernels part reports why
    with suppress(Exception):
        import dsv3_edu.fp8.kernels  # noqa: F401
    ctx: dict = {}
    report = {"schema": SCHEMA_VERSION, "command": " ".join(["python -m dsv3_edu.check", *sys.argv[1:]]),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device, "quick": quick,
              "max_minutes": max_minutes, "parts": {}}
    t0 = time.perf_counter()
    for name in names:
        if progress:
            print(f"[check] {name} (budget {s.budgets.get(name, 60)} s) ...", file=sys.stderr, flush=True)
        r = run_part(name, fns[name], s, ctx, left_s=60 * max_minutes - (time.perf_counter() - t0))
        report["parts"][name] = r.to_dict()
        if progress:
            print(f"[check] {name}: {r.status} in {r.seconds:.1f} s"
                  + (f" ({r.error or r.note})" if r.status != "ok" else ""), file=sys.stderr, flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    counts = {st: sum(p["status"] == st for p in report["parts"].values()) for st in STATUSES}
    goals = [g for p in report["parts"].values() for g in p["goals"]]
    report["summary"] = {**counts, "goals_met": sum(g["met"] for g in goals), "goals": len(goals),
                         "all_ran_ok": counts["failed"] + counts["error"] + counts["timeout"] == 0}
    validate_report(report)
    return report


PART_KEYS = {"status": str, "seconds": float, "budget_s": (int, float), "metrics": dict, "goals": list,
             "note": str, "error": (str, type(None))}
GOAL_KEYS = {"name": str, "value": (int, float), "target": str, "met": bool}
SUMMARY_KEYS = (*STATUSES, "goals_met", "goals", "all_ran_ok")


def validate_report(report: dict) -> None:
    """Raise ValueError naming the first thing that does not follow the report's schema (docs/gpu_check.md)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"check report: {what}")
    for k, t in {"schema": int, "command": str, "started_utc": str, "device": str, "quick": bool,
                 "max_minutes": (int, float), "parts": dict, "seconds": float, "summary": dict}.items():
        need(isinstance(report.get(k), t), f"{k!r} missing or of the wrong type")
    need(report["schema"] == SCHEMA_VERSION, f"schema {report['schema']} != {SCHEMA_VERSION}")
    for name, p in report["parts"].items():
        for k, t in PART_KEYS.items():
            need(isinstance(p.get(k), t), f"part {name}: {k!r} missing or of the wrong type")
        need(p["status"] in STATUSES, f"part {name}: status {p['status']!r} not in {STATUSES}")
        need((p["status"] in ("error", "timeout")) == (p["error"] is not None),
             f"part {name}: an error message exactly when the status is error/timeout")
        for g in p["goals"]:
            for k, t in GOAL_KEYS.items():
                need(isinstance(g.get(k), t), f"part {name}: goal {k!r} missing or of the wrong type")
    need(all(k in report["summary"] for k in SUMMARY_KEYS), f"summary lacks one of {SUMMARY_KEYS}")
    json.dumps(report)      # JSON-ready: raises on a tensor or other non-JSON value


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:,.3f}".rstrip("0").rstrip(".")
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(report: dict) -> str:
    """Two tables: parts (status, time, key figures) and goals (value, target, met)."""
    lines = [f"## dsv3_edu.check on {report['device']}" + (" (quick)" if report["quick"] else ""), "",
             "| part | status | seconds | figures |", "|---|---|---:|---|"]
    for name, p in report["parts"].items():
        figs = "; ".join(f"{k} {_fmt(v)}" for k, v in p["metrics"].items()
                         if k != "traceback_tail" and not isinstance(v, (dict, list)))
        text = p["error"] or p["note"]
        if text:
            figs = f"{figs} — {text}" if figs else text
        lines.append(f"| {name} | {p['status']} | {p['seconds']:.1f} | {figs.replace('|', '/')} |")
    goals = [(n, g) for n, p in report["parts"].items() for g in p["goals"]]
    if goals:
        lines += ["", "| goal | value | target | met |", "|---|---:|---|---|"]
        lines += [f"| {g['name']} | {_fmt(g['value'])} | {g['target']} | {'yes' if g['met'] else 'NO'} |"
                  for _, g in goals]
    sm = report["summary"]
    lines += ["", f"{sum(sm[s] for s in STATUSES)} parts: " + ", ".join(f"{sm[s]} {s}" for s in STATUSES if sm[s])
              + f"; goals met {sm['goals_met']}/{sm['goals']}; {report['seconds']:.0f} s in all"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dsv3_edu.check", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--quick", action="store_true", help="small sizes (CI)")
    p.add_argument("--parts", nargs="+", metavar="PART", help=f"only these parts, from {list(PARTS)}")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="time budget of the whole check (default 8 on a GPU, 30 on CPU); parts left are skipped")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        report = run_check(args.parts, args.quick, device,
                           max_minutes=args.max_minutes or (8.0 if device == "cuda" else 30.0))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nJSON report: {args.out}")
    return 0 if report["summary"]["all_ran_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
