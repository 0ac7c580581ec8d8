"""Figure-4-style picture of DualPipe's F&B cell (notebook 07); the numbers come from ``dsv3_edu.parallel.overlap``.

- ``plot_fb_overlap``  the serial chunk pair above, the overlapped pair below on a computation and a
                       communication lane, exposed communication hatched;
- ``plot_fb_sweep``    F&B and serial time as the communication per computation grows.
Colours follow the report: orange forward, green backward for input, blue backward for weights, purple PP
communication; an all-to-all takes the colour of the chunk it belongs to, lighter.
"""
from __future__ import annotations

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle

from ..parallel.overlap import COMM, COMPUTE, ChunkTimes, OverlapResult, fb_overlap

_COLORS = {"F": "#f6a04d", "B": "#9ad7a0", "W": "#5b8def", "PP": "#9b6fc3"}


def _color(component: str) -> tuple:
    if component.startswith("PP"):
        return mcolors.to_rgb(_COLORS["PP"])
    kind = component[-2]                                  # "ATTN(F)" -> "F"
    rgb = mcolors.to_rgb(_COLORS[kind])
    if component.startswith(("DISPATCH", "COMBINE")):     # communication: the chunk's colour, lighter
        rgb = tuple(0.55 * c + 0.45 for c in rgb)
    return rgb


def _box(ax, x0, x1, y, h, name, hatch=None, min_label=0.0):
    if x1 <= x0:
        return
    ax.add_patch(Rectangle((x0, y), x1 - x0, h, facecolor=_color(name), edgecolor="black", linewidth=0.6,
                           hatch=hatch))
    if x1 - x0 >= min_label:                              # a label only where it fits
        ax.text((x0 + x1) / 2, y + h / 2, name, ha="center", va="center", fontsize=7)


def plot_fb_overlap(result: OverlapResult | None = None, times: ChunkTimes | None = None, ax=None,
                    title: str | None = None):
    """Serial F then B (top row) and the overlapped F&B cell on two lanes (below). Returns the Figure."""
    result = result or fb_overlap(times)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(11, 3.2))
    min_label = 0.055 * max(result.serial_time, result.fb_time)
    # serial reference: the forward chunk's components then the backward chunk's, all SMs computing
    order = ["ATTN(F)", "DISPATCH(F)", "MLP(F)", "COMBINE(F)", "PP(F)",
             "COMBINE(B)", "MLP(B)", "MLP(W)", "DISPATCH(B)", "ATTN(B)", "ATTN(W)", "PP(B)"]
    t = 0.0
    for c in order:
        lane, s, e = result.spans[c]
        d = (e - s) / result.slowdown if lane == COMPUTE else e - s      # undo the SM split: all SMs compute
        _box(ax, t, t + d, 2.2, 0.7, c, min_label=min_label)
        t += d
    comp = sorted((s, e) for ln, s, e in result.spans.values() if ln == COMPUTE)
    for c, (lane, s, e) in result.spans.items():
        y = 1.0 if lane == COMPUTE else 0.0
        hatch = None
        if lane == COMM:                                   # exposed if no computation runs under it
            covered = sum(max(0.0, min(e, b) - max(s, a)) for a, b in comp)
            hatch = "///" if covered < (e - s) - 1e-9 else None
        _box(ax, s, e, y, 0.7, c, hatch, min_label)
    ax.axvline(result.fb_time, color="red", linewidth=1.2)
    ax.axvline(result.serial_time, color="gray", linewidth=1.0, linestyle="--")
    ax.set_yticks([0.35, 1.35, 2.55])
    ax.set_yticklabels(["F&B: communication", "F&B: computation", "serial F then B"])
    ax.set_xlim(0, max(result.serial_time, result.fb_time) * 1.02)
    ax.set_ylim(-0.2, 3.1)
    ax.set_xlabel("time (units of the component times)")
    handles = [Patch(color=_COLORS[k], label=lab) for k, lab in
               (("F", "forward"), ("B", "backward for input"), ("W", "backward for weights"),
                ("PP", "PP communication"))]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="exposed communication"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(title or f"F&B {result.fb_time:.3g} (red) vs serial {result.serial_time:.3g} (dashed); "
                          f"exposed communication {result.exposed_comm:.3g} of {result.comm_time:.3g}")
    fig.tight_layout()
    return fig


def plot_fb_sweep(rows: list[dict], ax=None, title: str | None = None):
    """Lines of F&B and serial time against communication per computation (rows from ``fb_sweep``)."""
    if not rows:
        raise ValueError("rows is empty: pass the output of dsv3_edu.parallel.overlap.fb_sweep")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.5, 3.8))
    x = [r["comm_per_compute"] for r in rows]
    ax.plot(x, [r["serial"] for r in rows], "--", color="gray", label="serial F + B_full")
    ax.plot(x, [r["fb"] for r in rows], "-o", color="C3", markersize=3, label="overlapped F&B")
    ax.plot(x, [r["exposed"] for r in rows], "-", color="C0", label="exposed communication")
    ax.set_xlabel("communication / computation of the chunk pair")
    ax.set_ylabel("time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "what the overlap hides as communication grows")
    fig.tight_layout()
    return fig
