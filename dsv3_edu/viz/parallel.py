"""Expert-parallelism plots and an ipywidgets explorer (notebook 08). Every plot returns a matplotlib Figure.

- ``plot_rank_load``       per-rank load as grouped bars (e.g. before / after redundant experts);
- ``plot_ranks_per_token`` how many ranks ("nodes") each token is sent to, with and without the group limit;
- ``ep_explorer``          world size, kept groups M and redundant experts per rank on one routing.
The numbers come from ``dsv3_edu.parallel.ep``; nothing is computed here that the package does not define.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from ..balance import expert_load, max_violation
from ..config import ModelConfig
from ..model.moe import route
from ..parallel.ep import DispatchStats, dispatch_stats, max_ranks_per_token, plan_redundant_experts, rank_load


def plot_rank_load(loads: dict[str, torch.Tensor], ax=None, title: str | None = None):
    """Grouped bars: one group per rank, one bar per named (W,) load; the legend gives each one's max/mean."""
    if not loads:
        raise ValueError("loads must name at least one (W,) tensor")
    sizes = {name: v.numel() for name, v in loads.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every load needs the same number of ranks, got {sizes}")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.5))
    W, n = next(iter(sizes.values())), len(loads)
    width = 0.8 / n
    for i, (name, load) in enumerate(loads.items()):
        load = load.detach().float().cpu()
        ratio = 1 + max_violation(load).item()
        ax.bar(torch.arange(W) + (i - (n - 1) / 2) * width, load, width, color=f"C{i}",
               label=f"{name} (max/mean {ratio:.2f})")
    mean = next(iter(loads.values())).float().mean().item()
    ax.axhline(mean, color="black", linestyle="--", linewidth=1, label="mean")
    ax.set_xlabel("rank")
    ax.set_ylabel("(token, expert) pairs")
    if W <= 16:
        ax.set_xticks(range(W))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title)
    return fig


def plot_ranks_per_token(stats: dict[str, DispatchStats], bound: int | None = None, ax=None,
                         title: str | None = None):
    """Histogram of the distinct destination ranks per token for each named routing (``dispatch_stats``)."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.5))
    top = max(s.max_ranks for s in stats.values())
    n = len(stats)
    width = 0.8 / n
    for i, (name, s) in enumerate(stats.items()):
        counts = torch.bincount(s.ranks_per_token, minlength=top + 1)[1:].float()
        share = counts / counts.sum()                                     # fraction of tokens reaching k ranks
        ax.bar(torch.arange(1, top + 1) + (i - (n - 1) / 2) * width, share, width, color=f"C{i}",
               label=f"{name} (mean {s.mean_ranks:.2f})")
    if bound is not None:
        ax.axvline(bound + 0.5, color="black", linestyle="--", linewidth=1, label=f"guaranteed <= {bound}")
    ax.set_xlabel("ranks (nodes) a token is sent to")
    ax.set_ylabel("share of tokens")
    ax.set_xticks(range(1, top + 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    if title:
        ax.set_title(title)
    return fig


def ep_explorer(scores: torch.Tensor, cfg: ModelConfig, world_sizes=(4, 8, 16, 32), bytes_per_elem: int = 1):
    """ipywidgets explorer on fixed affinities ``scores`` (N, E): pick W, M (groups kept) and redundant experts.

    Routes with ``route`` (cfg's top-K and groups, M from the slider), then shows the ranks per token with and
    without the group limit, the dispatch bytes per token (``dispatch_stats``; ``bytes_per_elem=1``: the
    report's FP8 dispatch), and the per-rank load before and after ``plan_redundant_experts``.
    Returns an ``Explorer`` (put the call last in a cell to show it); its first view is drawn at once.
    """
    import ipywidgets as widgets  # lazy: only notebooks need it

    from .explore import Explorer

    E, K, G = cfg.n_routed_experts, cfg.n_activated_experts, cfg.n_expert_groups
    if scores.dim() != 2 or scores.size(1) != E:
        raise ValueError(f"scores must be (N, {E}) affinities for cfg's {E} experts, got {tuple(scores.shape)}")
    sizes = [w for w in world_sizes if E % w == 0]
    if not sizes:
        raise ValueError(f"no world size in {world_sizes} divides the {E} experts")
    min_groups = -(-K // cfg.experts_per_group)                      # M must leave room for K experts
    style = {"description_width": "initial"}
    w = {
        "W": widgets.Dropdown(options=sizes, value=sizes[len(sizes) // 2], description="ranks W", style=style),
        "M": widgets.IntSlider(value=cfg.n_limited_groups, min=min_groups, max=G, description="groups M",
                               style=style),
        "R": widgets.IntSlider(value=1, min=0, max=3, description="redundant/rank", style=style),
    }
    unlimited = route(scores, None, K, 1, 1, cfg.route_scale)[1]     # plain top-K, no group limit

    def draw(v):
        W, M, R = v["W"], v["M"], v["R"]
        _, limited = route(scores, None, K, G, M, cfg.route_scale)
        st = {f"M = {M} groups": dispatch_stats(limited, E, W, E // W, cfg.dim, bytes_per_elem),
              "no group limit": dispatch_stats(unlimited, E, W, E // W, cfg.dim, bytes_per_elem)}
        load = expert_load(limited, E)
        before = rank_load(load, W)
        plan = plan_redundant_experts(load, W, R * W)
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        plot_ranks_per_token(st, max_ranks_per_token(K, G, M, W), ax=axes[0], title=f"W = {W} ranks")
        plot_rank_load({"one copy per expert": before, f"+{R * W} redundant": plan.rank_load}, ax=axes[1],
                       title="per-rank load")
        fig.tight_layout()
        a, b = st.values()
        text = (f"dispatch bytes/token ({bytes_per_elem}-byte elements, dim {cfg.dim}): {a.bytes_per_token:,.0f} "
                f"with M = {M}, {b.bytes_per_token:,.0f} without the limit, {a.bytes_per_token_no_dedup:,.0f} "
                f"with one copy per expert")
        return fig, text

    return Explorer(w, draw, layout=widgets.HBox(list(w.values())))
