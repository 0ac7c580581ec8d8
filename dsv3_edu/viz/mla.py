"""MLA plots and explorers (notebook 02): KV-cache size against context, decode timings, YaRN's frequencies.

The numbers all come from the package (``dsv3_edu.accounting`` and ``dsv3_edu.model.rope``); these functions
only draw them. Every ``plot_*`` function returns a matplotlib Figure.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from ..accounting import kv_cache_bytes_per_token
from ..config import ModelConfig, get_config
from ..model.rope import rope_frequencies, yarn_correction_range, yarn_mscale

KV_KINDS = ("mha", "gqa", "mqa", "mla")


def kv_label(kind: str, n_kv_groups: int = 8) -> str:
    """'MHA', 'GQA-8', 'MQA', 'MLA'."""
    return f"GQA-{n_kv_groups}" if kind == "gqa" else kind.upper()


def plot_kv_cache_vs_context(cfg: ModelConfig, max_context: int = 128 * 1024, kinds=KV_KINDS,
                             n_kv_groups: int = 8, bytes_per_elem: int = 2, ax=None):
    """KV-cache GiB of one sequence against its length, one line per attention kind (log-log axes).

    The legend gives the bytes per token (all layers), from ``accounting.kv_cache_bytes_per_token``.
    """
    if max_context < 2:
        raise ValueError(f"max_context must be >= 2, got {max_context}")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    ctx = torch.logspace(0, math.log10(max_context), 100)                      # 1 .. max_context tokens
    for i, kind in enumerate(kinds):
        per_token = kv_cache_bytes_per_token(cfg, kind, bytes_per_elem, n_kv_groups)
        ax.loglog(ctx.numpy(), (ctx * per_token / 2**30).numpy(), color=f"C{i}",
                  label=f"{kv_label(kind, n_kv_groups)}: {per_token:,} B/token, "
                        f"{per_token * max_context / 2**30:,.1f} GiB at {max_context:,}")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("KV cache of one sequence (GiB)")
    ax.set_title(f"{cfg.n_layers} layers, n_h={cfg.n_heads}, d_h={cfg.qk_nope_head_dim}, "
                 f"d_c={cfg.kv_lora_rank}, d_h^R={cfg.qk_rope_head_dim}", fontsize=10)
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=8)
    return fig


def gqa_group_options(n_heads: int) -> list[int]:
    """Valid GQA group counts for n_heads query heads: the divisors of n_heads (1 = MQA, n_heads = MHA)."""
    return [g for g in range(1, n_heads + 1) if n_heads % g == 0]


def kv_cache_explorer(base: str | ModelConfig = "deepseek-v3"):
    """ipywidgets explorer: KV-cache size against context for MHA / GQA / MQA / MLA, with knobs for the shape.

    The GQA group count only offers divisors of the head count (a group shares one K/V head, so groups
    cannot outnumber heads). Returns an ``Explorer``: put the call last in a cell to show it.
    """
    import ipywidgets as widgets

    from .explore import Explorer

    cfg = get_config(base) if isinstance(base, str) else base
    slider = dict(continuous_update=False, style={"description_width": "initial"})
    label = {"description_width": "initial"}
    knobs = {
        "n_heads": widgets.IntSlider(value=cfg.n_heads, min=8, max=256, step=8, description="n_h (heads)", **slider),
        "qk_nope_head_dim": widgets.IntSlider(value=cfg.qk_nope_head_dim, min=32, max=256, step=32,
                                              description="d_h", **slider),
        "kv_lora_rank": widgets.IntSlider(value=cfg.kv_lora_rank, min=64, max=2048, step=64,
                                          description="d_c (latent)", **slider),
        "qk_rope_head_dim": widgets.IntSlider(value=cfg.qk_rope_head_dim, min=16, max=128, step=16,
                                              description="d_h^R", **slider),
        "n_layers": widgets.IntSlider(value=cfg.n_layers, min=1, max=128, step=1, description="layers", **slider),
        "n_kv_groups": widgets.Dropdown(options=gqa_group_options(cfg.n_heads), value=8,
                                        description="GQA groups (divide n_h)", style=label),
        "max_context_k": widgets.Dropdown(options=[4, 32, 128, 1024], value=128, description="context (K tokens)",
                                          style=label),
    }

    def heads_changed(change):                     # keep the GQA choice valid: the largest divisor <= the old one
        groups = knobs["n_kv_groups"]
        old, options = groups.value, gqa_group_options(change["new"])
        with explorer.quiet():                     # one redraw, by the heads slider's own observer
            groups.options = options
            groups.value = max(g for g in options if g <= old)

    knobs["n_heads"].observe(heads_changed, names="value")   # registered first: runs before the redraw

    def draw(v):
        shape = {k: v[k] for k in ("n_heads", "qk_nope_head_dim", "kv_lora_rank", "qk_rope_head_dim", "n_layers")}
        c = cfg.replace(**shape, n_dense_layers=min(cfg.n_dense_layers, v["n_layers"]))
        return plot_kv_cache_vs_context(c, v["max_context_k"] * 1024, n_kv_groups=v["n_kv_groups"]), ""

    explorer = Explorer(knobs, draw)
    return explorer


def plot_decode_benchmark(contexts: list[int], ms_per_token: dict[str, list[float]],
                          cache_bytes: dict[str, list[int]]):
    """Two panels against context length: decode latency (ms per new token) and KV-cache size (MiB)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, mode in enumerate(ms_per_token):
        a.plot(contexts, ms_per_token[mode], "o-", color=f"C{i}", label=mode)
        b.plot(contexts, [n / 2**20 for n in cache_bytes[mode]], "o-", color=f"C{i}", label=mode)
    a.set_ylabel("ms per decoded token")
    b.set_ylabel("KV cache, all layers (MiB)")
    for ax in (a, b):
        ax.set_xlabel("context length (tokens)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_yarn(cfg: ModelConfig):
    """Three panels: RoPE wavelength per pair with and without YaRN, the interpolation ramp, and mscale(s).

    ``cfg`` must use YaRN (max_seq_len > original_seq_len), like the ``deepseek-v3`` preset.
    """
    if cfg.max_seq_len <= cfg.original_seq_len:
        raise ValueError(f"YaRN is off for this config: max_seq_len ({cfg.max_seq_len}) <= original_seq_len "
                         f"({cfg.original_seq_len})")
    plain = rope_frequencies(cfg.replace(max_seq_len=cfg.original_seq_len))   # (d_h^R / 2,)
    yarn = rope_frequencies(cfg)
    low, high = yarn_correction_range(cfg.beta_fast, cfg.beta_slow, cfg.qk_rope_head_dim, cfg.rope_theta,
                                      cfg.original_seq_len)
    j = torch.arange(plain.numel()).numpy()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.6))
    a.plot(j, (2 * math.pi / plain).numpy(), "o-", ms=3, label="RoPE")
    a.plot(j, (2 * math.pi / yarn).numpy(), "o-", ms=3, label=f"YaRN, s = {cfg.rope_factor:g}")
    a.axhline(cfg.original_seq_len, color="gray", ls="--", lw=1, label=f"original context {cfg.original_seq_len}")
    a.set_yscale("log")
    a.set_xlabel("pair index j")
    a.set_ylabel("wavelength 2π/θ_j (tokens)")
    a.legend(fontsize=8)
    b.plot(j, (yarn / plain).numpy(), "o-", ms=3, color="C1")
    b.axhline(1 / cfg.rope_factor, color="gray", ls=":", lw=1)
    b.axvspan(low, high, color="C1", alpha=0.1, label=f"ramp: pairs {low}..{high}")
    b.set_xlabel("pair index j")
    b.set_ylabel("θ_j (YaRN) / θ_j")
    b.set_title("keep (fast pairs) -> divide by s (slow pairs)", fontsize=10)
    b.legend(fontsize=8)
    s = torch.linspace(1, 64, 200)
    mscales = [yarn_mscale(float(v), cfg.mscale) for v in s]
    c.plot(s.numpy(), mscales, label="mscale = 0.1 ln s + 1")
    c.plot(s.numpy(), [m * m for m in mscales], label="softmax factor mscale²")
    m = yarn_mscale(cfg.rope_factor, cfg.mscale)                              # at this config's s
    c.plot([cfg.rope_factor] * 2, [m, m * m], "ko", ms=4)
    c.set_xlabel("scale factor s")
    c.legend(fontsize=8)
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
