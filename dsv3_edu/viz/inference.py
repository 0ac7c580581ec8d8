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
