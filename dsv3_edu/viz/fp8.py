"""Figures and explorer helpers for the FP8 notebook (notebooks/06_fp8.ipynb).

The numbers come from ``dsv3_edu.fp8`` (formats, quant); this module only arranges and draws them. Nothing here
imports triton.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from ..fp8.formats import all_values, decode, format_info, fp8_max
from ..fp8.quant import cast_to_fp8, quant_dequant


def fp8_encoding(value: float, scale: float = 1.0, fmt: str = "e4m3") -> dict:
    """How ``value`` is stored in FP8 with a given scale: ``value / scale`` rounded to the nearest FP8 number
    (saturating at +-max), then multiplied back by ``scale``.

    Returns the scaled value, the stored byte and its bits and formula (see :func:`dsv3_edu.fp8.decode`), the
    FP8 value, the dequantized value, the absolute and relative rounding error, and flags: ``saturated``
    (|value / scale| above the format's max), ``subnormal``, ``underflow`` (a nonzero value stored as 0).
    """
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value}")
    y = torch.tensor([value / scale], dtype=torch.float32)          # (1,) what the cast sees
    q = cast_to_fp8(y, fmt)                                          # (1,) float8
    byte = q.view(torch.uint8).item()
    d = decode(byte, fmt)
    back = q.float().item() * scale
    abs_err = abs(back - value)
    return {"fmt": fmt, "scaled": y.item(), "byte": byte, "bits": d["bits"], "formula": d["formula"],
            "fp8": q.float().item(), "dequantized": back, "abs_err": abs_err,
            "rel_err": abs_err / abs(value) if value != 0 else 0.0,
            "saturated": abs(y.item()) > fp8_max(fmt), "subnormal": d["subnormal"],
            "underflow": value != 0 and q.float().item() == 0}


def relative_error_map(x: torch.Tensor, method: str, fmt: str = "e4m3") -> torch.Tensor:
    """|qdq(x) - x| / |x| per element (0 where x == 0), float32 of x's shape: where a method loses precision."""
    x = x.detach().float()
    err = (quant_dequant(x, method, fmt) - x).abs()
    return torch.where(x != 0, err / x.abs().clamp(min=1e-30), torch.zeros_like(err))


def plot_error_by_channel(x: torch.Tensor, methods=("per_tensor", "per_row", "tile_1x128"), fmt: str = "e4m3",
                          block: int = 128, ax=None, title: str | None = None):
    """Mean relative error of each channel of x (tokens, channels), averaged over tokens, one line per method,
    log scale, with the 1 x ``block`` tile boundaries dotted: shows which channels a coarse scale damages.
    Returns the Figure."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    x = x.detach().float()
    for method in methods:
        err = relative_error_map(x, method, fmt)                                 # (T, K)
        per_channel = err.sum(0) / (x != 0).sum(0).clamp(min=1)                  # (K,) mean over nonzero tokens
        ax.plot(range(x.size(-1)), 100 * per_channel.numpy(), lw=1,
                label=f"{method} (mean {100 * err[x != 0].mean().item():.1f}%)")
    for k in range(block, x.size(-1), block):
        ax.axvline(k, color="gray", lw=0.6, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("channel (dotted: 1x128 tile boundaries)")
    ax.set_ylabel("mean relative error over tokens (%)")
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_error_vs_outlier(factors, errors: dict, ax=None):
    """Mean relative quantization error against the outlier factor, one line per method.
    ``errors`` = {method: [error per factor]}. Returns the Figure."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    for method, errs in errors.items():
        ax.plot(factors, [100 * e for e in errs], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("outlier factor (one channel multiplied by it)")
    ax.set_ylabel("mean relative error (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def plot_fp8_values(fmts=("e4m3", "e5m2")):
    """Top: every positive representable value of each format on a log axis (subnormals in red).
    Bottom: relative gap to the next value (the precision you get at each magnitude)."""
    fig, (ax_v, ax_gap) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    for row, fmt in enumerate(fmts):
        info = format_info(fmt)
        v = all_values(fmt)
        v = v[v > 0].double()                                   # positive values, sorted
        sub = v < info["min_normal"]
        color = f"C{2 * row}"
        ax_v.scatter(v[~sub], [row] * int((~sub).sum()), marker="|", s=200, color=color)
        ax_v.scatter(v[sub], [row] * int(sub.sum()), marker="|", s=200, color="tab:red",
                     label="subnormal" if row == 0 else None)
        ax_v.annotate(f"max {info['max_normal']:g}", (info["max_normal"], row), textcoords="offset points",
                      xytext=(0, 10), ha="center", fontsize=8)
        gap = (v[1:] - v[:-1]) / v[:-1]                          # relative spacing
        ax_gap.step(v[:-1], gap, where="post", color=color, label=info["name"])
    ax_v.set_xscale("log")
    ax_v.set_yticks(range(len(fmts)), [format_info(f)["name"] for f in fmts])
    ax_v.set_ylim(-0.7, len(fmts) - 0.3)
    ax_v.set_title("Positive values representable in FP8 (log scale)")
    ax_v.legend(loc="center right", fontsize=8)
    ax_gap.set_yscale("log")
    ax_gap.set_xlabel("value")
    ax_gap.set_ylabel("relative gap to next value")
    ax_gap.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_accumulation_curves(curves: dict, ax=None):
    """Max relative error vs K for several results of :func:`accumulation_error_curve`, given as
    {label: result}. Returns the Figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    for label, r in curves.items():
        ax.plot(r["K"], r["max_rel_err"], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("K (inner dimension)")
    ax.set_ylabel("max relative error vs FP64")
    ax.legend(fontsize=8)
    return fig
