"""Inference plots: decode latency and KV-cache memory as the context grows."""
from __future__ import annotations

import matplotlib.pyplot as plt


def plot_decode_scaling(contexts: list[int], seconds: dict[str, list[float]], cache_bytes: dict[str, list[float]],
                        highlight: int | None = None):
    """Two panels against context length: milliseconds per generated token, and KV-cache size (MiB).

    ``seconds`` / ``cache_bytes`` map a decoding mode ("no cache", "naive", "absorbed", ...) to one value per
    context; a mode may be missing from ``cache_bytes`` (no cache). ``highlight`` draws a vertical line there.
    """
    for name, vals in list(seconds.items()) + list(cache_bytes.items()):
        if len(vals) != len(contexts):
            raise ValueError(f"{name!r} has {len(vals)} values for {len(contexts)} context lengths")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {name: f"C{i}" for i, name in enumerate(dict.fromkeys([*seconds, *cache_bytes]))}
    for name, vals in seconds.items():
        ax1.plot(contexts, [1e3 * v for v in vals], "o-", color=colors[name], label=name)
    for name, vals in cache_bytes.items():
        ax2.plot(contexts, [v / 2**20 for v in vals], "o-", color=colors[name], label=name)
    ax1.set_ylabel("ms per generated token")
    ax2.set_ylabel("KV cache (MiB)")
    for ax in (ax1, ax2):
        ax.set_xlabel("context length (tokens)")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if highlight is not None:
            ax.axvline(highlight, color="gray", ls=":")
    ax1.set_title("decode latency")
    ax2.set_title("cache memory (batch 1, float32)")
    fig.tight_layout()
    return fig


def plot_sampling_sweep(res: dict, ax=None):
    """Python-likeness of samples against temperature (``experiments.load_sampling_sweep()``): the share of
    statements that compile and of distinct statements that compile, each as a fraction of held-out code's (with
    the 95% bootstrap interval), and the share of distinct lines, whose fall shows the cold sampler looping."""
    rows = sorted(res["rows"], key=lambda r: r["temperature"])
    temps = [r["temperature"] for r in rows]
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.5, 3.8))
    for key, ci, ceiling, label in (("share", "ci95", res["heldout"]["share"], "statements that compile"),
                                    ("unique_share", "unique_ci95", res["heldout_unique"]["share"],
                                     "distinct statements that compile")):
        mid = [r[key] / ceiling for r in rows]
        err = [[m - r[ci][0] / ceiling for m, r in zip(mid, rows)], [r[ci][1] / ceiling - m for m, r in zip(mid, rows)]]
        ax.errorbar(temps, mid, yerr=err, marker="o", capsize=3, label=f"{label} (/ held-out code)")
    ax.plot(temps, [r["distinct_lines"] for r in rows], "s--", color="gray", label="distinct lines")
    ax.axhline(res["heldout_distinct_lines"], color="gray", ls=":", lw=1, label="distinct lines, held-out code")
    ax.axhline(0.8, color="C3", ls=":", lw=1, label="goal: 0.8 of held-out code")
    ax.set_xlabel("temperature")
    ax.set_ylabel("share")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(temps)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"samples of the default run ({rows[0]['n_samples']} per temperature)")
    fig.tight_layout()
    return fig
