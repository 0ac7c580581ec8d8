"""Where code runs: device choice, autocast, seeds and the course's fast mode."""
from __future__ import annotations

import contextlib
import os
import random

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


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast where the hardware does bf16 well (CUDA with bf16 support); a no-op elsewhere.

    On CPU, bf16 autocast is usually slower than fp32 for these small matrices, so it stays off.
    """
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, torch (all devices); return a CPU generator for data order."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)

