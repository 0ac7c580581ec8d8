"""Training plots: loss curves, MaxVio, expert load."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def plot_loss_curves(history: list[dict], runs: dict[str, list[dict]] | None = None, ax=None):
    """Train (main) and validation loss against tokens seen. ``runs`` overlays several named histories."""
    runs = runs or {"": history}
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    for i, (name, hist) in enumerate(runs.items()):
        color = f"C{i}"
        label = f"{name} " if name else ""
        ax.plot([r["tokens"] for r in hist], [r["main_loss"] for r in hist], color=color, alpha=0.6,
                label=f"{label}train")
        val = [r for r in hist if "val_loss" in r]
        if val:
            ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o--", color=color,
                    label=f"{label}validation")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("next-token loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_maxvio(runs: dict[str, list[dict]], ax=None):
    """Mean MaxVio over MoE layers against training step, one line per run."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    for name, hist in runs.items():
        ax.plot([r["step"] for r in hist], [sum(r["maxvio"]) / max(len(r["maxvio"]), 1) for r in hist], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("MaxVio (mean over MoE layers)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_expert_load(loads: list[torch.Tensor], ax=None, title: str = "tokens per expert (last step)"):
    """Heatmap: MoE layer x expert, share of routed tokens (1/E = perfectly balanced)."""
    mat = torch.stack([x.float() / x.sum().clamp_min(1) for x in loads]).numpy()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(8, 0.6 + 0.45 * len(loads)))
    im = ax.imshow(mat, aspect="auto", cmap="viridis")
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    ax.set_yticks(range(len(loads)))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="share of routed tokens")
    return fig


def plot_bits_per_byte(records, ax=None):
    """One run record or a list of them (``python -m dsv3_edu train --record FILE``, e.g. results/default_run.json
    and results/long_run.json): validation bits per byte against tokens seen, with xz, bz2 and zlib on the same
    validation text as horizontal lines, so the point where the model starts to beat a general-purpose compressor
    is visible. Several runs share a log-scale token axis: equal steps on it are doublings of the data seen."""
    records = [records] if isinstance(records, dict) else list(records)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    for i, rec in enumerate(records):
        val = [r for r in rec["curve"] if "val_bpb" in r]
        label = "the model (validation)" if len(records) == 1 else \
            f"{rec['train_config']['steps']} steps, {rec['wall_s'] / 60:.0f} min"
        ax.plot([r["tokens"] for r in val], [r["val_bpb"] for r in val], "o-", ms=3, color=f"C{4 + i}" if i else "C0",
                label=label)
    ev = records[0]["final_eval"]
    for i, name in enumerate(("xz", "bz2", "zlib")):
        if name in ev:
            ax.axhline(ev[name], color=f"C{i + 1}", ls="--", lw=1, label=f"{name} (strongest preset): {ev[name]:.3f}")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("bits per byte of held-out Python")
    if len(records) == 1:
        ax.set_title(f"{records[0]['command']}  ({records[0]['wall_s'] / 60:.1f} min)", fontsize=9)
    else:
        ax.set_xscale("log")
        ax.set_title("validation bits/byte of the recorded runs", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
