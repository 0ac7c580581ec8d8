"""Multi-Token Prediction pictures (notebook 05): which token each depth reads and predicts, as a table,
a figure and an ipywidgets explorer.

Convention (the report's, and ``Transformer._mtp_logits``): a window holds tokens t_0 .. t_T; the main model
reads t_0 .. t_{T-1}. At position i the main model predicts t_{i+1}. MTP depth k (1..D) combines the
depth-(k-1) hidden state at position i with the embedding of t_{i+k} and predicts t_{i+k+1}, so depth k has
T - k positions.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle


def mtp_alignment(T: int, depth: int, position: int) -> list[tuple[int, int | None, int]]:
    """For one position i: a (k, embedded token index, target token index) row per depth k = 0..D.

    k = 0 is the main model (it embeds t_i itself, given as None here: no extra embedding). Rows whose
    target would fall past t_T are left out (depth k exists only for i < T - k).
    """
    if not 0 <= position < T:
        raise ValueError(f"position must be in 0..{T - 1}, got {position}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    rows = [(0, None, position + 1)]
    for k in range(1, depth + 1):
        if position + k + 1 <= T:
            rows.append((k, position + k, position + k + 1))
    return rows


def alignment_table(tokens: list[str], depth: int) -> str:
    """Text table: one row per position i, the token each depth predicts there ('-': no prediction).

    tokens: the window t_0 .. t_T as strings (T + 1 of them)."""
    T = len(tokens) - 1
    if T < 1:
        raise ValueError("need at least two tokens (one input and one target)")
    show = [repr(t)[1:-1][:10] for t in tokens]
    head = f"{'i':>3} {'input t_i':>11} {'main: t_i+1':>12}" + "".join(
        f" {f'depth {k}: t_i+{k + 1}':>15}" for k in range(1, depth + 1))
    lines = [head, "-" * len(head)]
    for i in range(T):
        cells = [f"{i:>3}", f"{show[i]:>11}", f"{show[i + 1]:>12}"]
        for k in range(1, depth + 1):
            cells.append(f"{show[i + k + 1] if i + k + 1 <= T else '-':>15}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def plot_mtp_alignment(tokens: list[str], depth: int, position: int, ax=None):
    """Rows = main model and MTP depths 1..D, columns = tokens t_0..t_T. At ``position`` i, each row marks the
    token it embeds (green; the main row's input t_i) and the token it predicts (orange)."""
    T = len(tokens) - 1
    rows = mtp_alignment(T, depth, position)
    size = (min(1.0 * (T + 1) + 2, 13), 0.7 * (depth + 1) + 1.2)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=size)
    for k in range(depth + 1):
        y = depth - k
        for j in range(T + 1):
            ax.add_patch(Rectangle((j, y), 0.95, 0.8, facecolor="white", edgecolor="#999999", lw=0.8))
            ax.text(j + 0.47, y + 0.4, repr(tokens[j])[1:-1][:8], ha="center", va="center", fontsize=8)
    for k in range(len(rows), depth + 1):                         # depths with no prediction at this i
        ax.text(T + 0.5, depth - k + 0.4, "past the window", ha="right", va="center", fontsize=8, color="#b00020",
                bbox=dict(facecolor="white", edgecolor="none"))
    for k, emb, tgt in rows:
        y = depth - k
        src = position if k == 0 else emb
        ax.add_patch(Rectangle((src, y), 0.95, 0.8, facecolor="#b7e4b0", edgecolor="#2e7d32", lw=1.5))
        ax.text(src + 0.47, y + 0.4, repr(tokens[src])[1:-1][:8], ha="center", va="center", fontsize=8)
        ax.add_patch(Rectangle((tgt, y), 0.95, 0.8, facecolor="#ffd29a", edgecolor="#e65100", lw=1.5))
        ax.text(tgt + 0.47, y + 0.4, repr(tokens[tgt])[1:-1][:8], ha="center", va="center", fontsize=8)
        ax.annotate("", xy=(tgt + 0.1, y + 0.4), xytext=(src + 0.85, y + 0.4),
                    arrowprops=dict(arrowstyle="->", color="#444444", lw=1))
    ax.set_xlim(-0.1, T + 1)
    ax.set_ylim(-0.1, depth + 0.9)
    ax.set_yticks([depth - k + 0.4 for k in range(depth + 1)])
    ax.set_yticklabels(["main"] + [f"MTP depth {k}" for k in range(1, depth + 1)])
    ax.set_xticks([j + 0.47 for j in range(T + 1)])
    ax.set_xticklabels([f"t{j}" for j in range(T + 1)], fontsize=8)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(f"position i = {position}: green = token read (main: t_i; depth k: Emb(t_i+k)), "
                 f"orange = token predicted", fontsize=9)
    fig.tight_layout()
    return fig


def mtp_alignment_explorer(tokens: list[str], max_depth: int = 3):
    """Sliders for the depth D and the position i; redraws ``plot_mtp_alignment``. Returns an ``Explorer``."""
    import ipywidgets as widgets

    from .explore import interactive_figure

    style = dict(continuous_update=False, style={"description_width": "initial"})
    T = len(tokens) - 1
    depth = widgets.IntSlider(value=min(2, max_depth), min=1, max=max_depth, description="MTP depth D", **style)
    position = widgets.IntSlider(value=1, min=0, max=T - 1, description="position i", **style)

    def figure():
        return plot_mtp_alignment(tokens, depth.value, position.value)

    return interactive_figure([depth, position], figure)
