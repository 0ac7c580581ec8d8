"""Figures for the FP8 notebook. Each function returns a matplotlib Figure (nothing is shown or saved)."""
from __future__ import annotations

from .formats import all_values, format_info


def plot_fp8_values(fmts=("e4m3", "e5m2")):
    """Top: every positive representable value of each format on a log axis (subnormals in red).
    Bottom: relative gap to the next value (the precision you get at each magnitude)."""
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

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
