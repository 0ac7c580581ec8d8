"""DeepSeekMoE plots and explorers (notebook 03): one token's routing, and which experts fire for which text.

Routing itself is ``dsv3_edu.model.route``; these helpers draw it and count it. Every ``plot_*`` function
returns a matplotlib Figure.
"""
from __future__ import annotations

import io
import keyword
import tokenize

import matplotlib.pyplot as plt
import torch

from ..model.moe import route

TOKEN_CLASSES = ("keyword", "identifier", "string", "number", "comment", "operator", "whitespace")


# ----------------------------------------------------------------------------------------- one token's routing
def plot_routing(scores: torch.Tensor, bias: torch.Tensor | None = None, top_k: int = 4, n_groups: int = 4,
                 topk_groups: int = 2, route_scale: float = 2.5, ax=None):
    """Bars: one token's affinities s_i (E,), coloured by group; dropped groups greyed; chosen experts
    outlined and labelled with their gating weight g_i. Black ticks show s_i + b_i when a bias is given."""
    scores = scores.float().flatten()
    E = scores.numel()
    if E % n_groups:
        raise ValueError(f"n_groups ({n_groups}) must divide the number of experts ({E})")
    weights, indices = route(scores[None], None if bias is None else bias.float()[None], top_k, n_groups,
                             topk_groups, route_scale)
    weights, indices = weights[0], indices[0]
    choice = scores if bias is None else scores + bias.float()
    per_group = E // n_groups
    # the kept groups: ask route for every expert of the kept groups
    _, in_kept = route(scores[None], None if bias is None else bias.float()[None], topk_groups * per_group,
                       n_groups, topk_groups, route_scale)
    kept = set((in_kept[0] // per_group).tolist())

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(8, 3.6))
    x = torch.arange(E).numpy()
    colors = [f"C{i // per_group}" if i // per_group in kept else "lightgray" for i in range(E)]
    bars = ax.bar(x, scores.numpy(), color=colors, alpha=0.45)
    for w, i in zip(weights.tolist(), indices.tolist()):
        bars[i].set_alpha(1.0)
        bars[i].set_edgecolor("black")
        bars[i].set_linewidth(1.5)
        ax.annotate(f"g={w:.2f}", (i, scores[i].item()), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")
    if bias is not None and bias.abs().max() > 0:
        biased = (bias != 0).nonzero().flatten()
        ax.plot(biased.numpy(), choice[biased].numpy(), "k_", ms=14, mew=2, label="s + b (used to choose)")
        ax.legend(fontsize=8, loc="upper right")
    for g in range(1, n_groups):
        ax.axvline(g * per_group - 0.5, color="gray", lw=0.8, ls=":")
    ax.set_xticks(x)
    ax.set_xlabel("routed expert (colour = group; grey = group dropped)")
    ax.set_ylabel("affinity s = sigmoid(u·e)")
    ax.set_title(f"top-{top_k} of {E}, {topk_groups} of {n_groups} groups kept; "
                 f"sum of g = {weights.sum().item():.2f}", fontsize=10)
    ax.set_ylim(0, max(1.05, choice.max().item() * 1.1))
    fig.tight_layout()
    return fig


def routing_explorer(n_experts: int = 16, seed: int = 0):
    """ipywidgets explorer of one toy token's routing: top-k, groups, groups kept, route_scale, and a bias
    added to one expert. The sliders only offer valid settings: at most all groups kept, and top-k at most
    the experts in the kept groups (their maxima follow the other controls). Returns an ``Explorer``."""
    import ipywidgets as widgets

    from .explore import Explorer

    g = torch.Generator().manual_seed(seed)
    scores = torch.sigmoid(torch.randn(n_experts, generator=g))                 # (E,) one token's affinities
    divisors = [d for d in range(1, n_experts + 1) if n_experts % d == 0 and (d == 1 or n_experts // d >= 2)]
    slider = dict(continuous_update=False, style={"description_width": "initial"})
    G0 = 4 if 4 in divisors else 1
    knobs = {
        "n_groups": widgets.Dropdown(options=divisors, value=G0, description="groups",
                                     style={"description_width": "initial"}),
        "topk_groups": widgets.IntSlider(value=min(2, G0), min=1, max=G0, step=1, description="groups kept",
                                         **slider),
        "top_k": widgets.IntSlider(value=4, min=1, max=min(8, min(2, G0) * (n_experts // G0)), step=1,
                                   description="top-k", **slider),
        "route_scale": widgets.FloatSlider(value=2.5, min=0.5, max=4.0, step=0.5, description="route_scale", **slider),
        "biased_expert": widgets.IntSlider(value=0, min=0, max=n_experts - 1, step=1, description="bias on expert",
                                           **slider),
        "bias_value": widgets.FloatSlider(value=0.0, min=-0.5, max=0.5, step=0.05, description="bias b", **slider),
    }

    def limits(_=None):                            # registered before the redraw, so it draws valid values
        G = knobs["n_groups"].value
        with explorer.quiet():                     # one redraw, by the changed control's own observer
            knobs["topk_groups"].max = G           # a lower max clips the value too
            knobs["top_k"].max = min(8, knobs["topk_groups"].value * (n_experts // G))

    knobs["n_groups"].observe(limits, names="value")
    knobs["topk_groups"].observe(limits, names="value")

    def draw(v):
        bias = torch.zeros(n_experts)
        bias[v["biased_expert"]] = v["bias_value"]
        fig = plot_routing(scores, bias, v["top_k"], v["n_groups"], v["topk_groups"], v["route_scale"])
        return fig, ""

    explorer = Explorer(knobs, draw)
    return explorer


# ----------------------------------------------------------------------------------------- routing on text
def python_token_classes(text: str, offsets: list[tuple[int, int]]) -> list[str]:
    """The Python token class (one of TOKEN_CLASSES) of each BPE token, given its (start, end) character
    offsets in ``text``: the class of the token's first non-space character, from the ``tokenize`` module."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    cls = ["whitespace"] * len(text)                                   # class of every character
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NAME:
                name = "keyword" if keyword.iskeyword(tok.string) else "identifier"
            elif tok.type in (tokenize.STRING, getattr(tokenize, "FSTRING_START", -1),
                              getattr(tokenize, "FSTRING_MIDDLE", -1), getattr(tokenize, "FSTRING_END", -1)):
                name = "string"
            else:
                name = {tokenize.NUMBER: "number", tokenize.COMMENT: "comment", tokenize.OP: "operator"}.get(tok.type)
            if name is None:
                continue
            a = starts[tok.start[0] - 1] + tok.start[1]
            b = starts[tok.end[0] - 1] + tok.end[1]
            cls[a:b] = [name] * (b - a)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass                                                            # a cut-off snippet: keep what we got
    out = []
    for a, b in offsets:
        span = [cls[i] for i in range(a, min(b, len(text))) if not text[i].isspace()]
        out.append(span[0] if span else "whitespace")
    return out


def class_expert_counts(indices: torch.Tensor, classes: list[str], n_experts: int,
                        class_names=TOKEN_CLASSES) -> torch.Tensor:
    """(C, E) routing slots per token class and expert; indices (T, K) chosen experts of T tokens."""
    if indices.size(0) != len(classes):
        raise ValueError(f"{indices.size(0)} tokens in indices but {len(classes)} classes")
    row = torch.tensor([class_names.index(c) for c in classes])                 # (T,)
    counts = torch.zeros(len(class_names), n_experts)
    counts.index_put_((row[:, None].expand_as(indices), indices), torch.ones(indices.shape), accumulate=True)
    return counts


def mutual_information_bits(counts: torch.Tensor) -> float:
    """I(class; expert) in bits from a (C, E) count table: 0 when the experts ignore the token class."""
    p = counts.double() / counts.sum()
    pc, pe = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    return float((p[nz] * (p[nz] / (pc * pe)[nz]).log2()).sum())


def plot_class_expert_heatmaps(counts: list[torch.Tensor], titles: list[str], class_names=TOKEN_CLASSES):
    """One heatmap per MoE layer: for each token class (row), the share of its routing slots per expert."""
    fig, axes = plt.subplots(1, len(counts), figsize=(5.2 * len(counts), 3.4), squeeze=False)
    for ax, c, title in zip(axes[0], counts, titles):
        keep = c.sum(1) > 0
        share = c[keep] / c[keep].sum(1, keepdim=True)
        im = ax.imshow(share.numpy(), aspect="auto", cmap="viridis", vmin=0)
        ax.set_yticks(range(int(keep.sum())))
        ax.set_yticklabels([n for n, k in zip(class_names, keep.tolist()) if k])
        ax.set_xticks(range(c.size(1)))
        ax.set_xlabel("routed expert")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    return fig


def plot_token_routing(tokens: list[str], indices: torch.Tensor, n_experts: int, classes: list[str] | None = None,
                       title: str = "", ax=None, class_names=TOKEN_CLASSES):
    """Tokens (x) against experts (y): a dark cell where the token was routed to the expert. indices (T, K).
    With ``classes``, each token's label is coloured by its class."""
    T = len(tokens)
    if indices.size(0) != T:
        raise ValueError(f"{T} tokens but indices has {indices.size(0)} rows")
    grid = torch.zeros(n_experts, T)
    grid[indices.T, torch.arange(T).expand(indices.size(1), T)] = 1
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(max(6.0, 0.2 * T), 3.4))
    ax.imshow(grid.numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
    ax.set_xticks(range(T))
    ax.set_xticklabels([repr(t)[1:-1] for t in tokens], rotation=90, fontsize=8, family="monospace")
    if classes is not None:
        colour = {c: f"C{i}" for i, c in enumerate(class_names)}
        for label, c in zip(ax.get_xticklabels(), classes):
            label.set_color(colour[c])
        handles = [plt.Line2D([], [], color=colour[c], marker="s", ls="", label=c)
                   for c in class_names if c in set(classes)]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_yticks(range(n_experts))
    ax.set_ylabel("routed expert")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
