"""Plots of the reference ablations (``results/ablations.json``, see ``dsv3_edu.experiments``): per-seed curves
of the two variants of a comparison, and the paired differences with their 95% intervals."""
from __future__ import annotations

import matplotlib.pyplot as plt


def plot_ablation_curves(comp: dict, key: str = "main_loss", ax=None, title: str | None = None):
    """One line per (variant, seed) of ``key`` against tokens seen: A in C0, B in C1; validation points
    (``val_loss``) are drawn as markers. ``key``: main_loss, val_loss, val_bpb or maxvio."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    colors = {comp["a"]: "C0", comp["b"]: "C1"}
    labelled = set()
    for r in comp["runs"]:
        pts = [p for p in r["curve"] if key in p]
        if not pts:
            continue
        label = None if r["variant"] in labelled else r["variant"]
        labelled.add(r["variant"])
        style = "o-" if key.startswith("val_") else "-"
        ax.plot([p["tokens"] for p in pts], [p[key] for p in pts], style, color=colors.get(r["variant"], "C2"),
                alpha=0.7, lw=1, ms=3, label=label)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel({"main_loss": "train next-token loss (nats)", "val_loss": "validation loss (nats)",
                   "val_bpb": "validation bits/byte", "maxvio": "MaxVio (mean over MoE layers)"}.get(key, key))
    if key == "maxvio":
        ax.set_yscale("log")
    ax.set_title(title or f"{comp['question']}: every seed")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_intervals(comparisons: dict, metric: str = "val_loss", axes=None):
    """Per comparison, one panel: the per-seed paired differences B - A (dots), their mean and the 95% Student-t
    interval (bar), and zero (dashed). An interval that crosses the dashed line does not separate the variants."""
    names = [n for n, c in comparisons.items() if metric in c.get("paired", {})]
    if not names:
        raise ValueError(f"no comparison has paired differences of {metric!r}")
    if axes is None:
        fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.3 + 1.1 * len(names)), squeeze=False)
        axes = axes[:, 0]
    fig = axes[0].figure
    for ax, name in zip(axes, names):
        c, p = comparisons[name], comparisons[name]["paired"][metric]
        diffs = [float(v) for v in p["diffs"].values()]
        ax.axvline(0, color="k", ls="--", lw=1)
        ax.plot(diffs, [0] * len(diffs), "o", color="C7", alpha=0.8, label="per seed")
        if "ci95" in p:
            lo, hi = p["ci95"]
            color = "C3" if p["excludes_zero"] else "C0"
            ax.errorbar([p["mean"]], [0], xerr=[[p["mean"] - lo], [hi - p["mean"]]], fmt="s", color=color,
                        capsize=6, lw=2, label="mean, 95% CI")
        ax.set_yticks([])
        ax.set_title(f"{name}: {c['b']} - {c['a']} ({metric}, {len(diffs)} seeds)", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig
