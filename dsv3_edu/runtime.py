"""Where code runs: device choice, autocast, seeds and the course's fast mode."""
from __future__ import annotations

import contextlib
import functools
import os
import random
from pathlib import Path

import torch

FAST_ENV = "DSV3_FAST"


def fast_mode() -> bool:
    """True when ``DSV3_FAST=1``: notebooks and scripts shrink steps and sizes so the course runs in CI."""
    return os.environ.get(FAST_ENV, "0").lower() not in ("", "0", "false", "no")


def pick(full, fast):
    """``fast`` in fast mode, else ``full``: ``steps = pick(600, 20)``."""
    return fast if fast_mode() else full


def get_device(name: str | None = None) -> torch.device:
    """``name`` if given ("cpu", "cuda", "mps"), else CUDA, then Apple MPS, then CPU."""
    if name and name != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch.cuda.is_available() is False")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("device 'mps' asked for, but torch.backends.mps.is_available() is False")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DTYPES = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes in bf16 natively: AVX512-BF16 or AMX-BF16 (Intel Cooper Lake, Sapphire
    Rapids and later; AMD Zen 4 and later). Detected, not guessed: the CPU flags from ``/proc/cpuinfo`` on
    Linux, else PyTorch's own dispatch level (``AVX512_BF16`` / ``AMX`` in ``get_cpu_capability()``)."""
    flags = _cpu_flags()
    if flags is not None:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    cap = torch.backends.cpu.get_cpu_capability().upper()
    return "BF16" in cap or "AMX" in cap


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags Linux reports (None where there is no /proc/cpuinfo, e.g. macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The compute dtype of a run: ``"fp32"`` or ``"bf16"`` as asked, or for ``"auto"`` bf16 where the
    hardware computes it natively (CUDA with bf16 support, CPUs with AVX512-BF16/AMX) and fp32 elsewhere.

    bf16 here always means autocast with fp32 master weights: parameters, gradients and the optimizer stay
    fp32; only the matmuls run in bf16. On a CPU without native bf16 the bf16 matmuls are emulated and many
    times slower than fp32, hence fp32 there.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        if device.type == "mps":
            raise ValueError("dtype 'bf16' is not supported on MPS by this course; use fp32 or auto")
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype | bool = True):
    """bf16 autocast (fp32 master weights) when ``dtype`` is ``torch.bfloat16``; a no-op for fp32.

    ``dtype`` is what ``resolve_dtype`` returned. A bool is the older form: True means "bf16 where the
    hardware computes it natively" (``resolve_dtype("auto", device)``), False means fp32.
    On CPUs with AVX512-BF16 or AMX, bf16 autocast is faster than fp32 (about 2x the matmul throughput);
    on CPUs without them it is far slower, so ``auto`` keeps fp32 there.
    """
    if isinstance(dtype, bool):
        dtype = resolve_dtype("auto", device) if dtype else torch.float32
    if dtype == torch.bfloat16 and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, torch (all devices); return a CPU generator for data order."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)

