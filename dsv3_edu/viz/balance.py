"""Load-balancing pictures (notebook 04): the sign rule on a synthetic skewed router (simulated by
``dsv3_edu.balance_sim``), the bias spread against its speed limit, and an ipywidgets explorer.
"""
from __future__ import annotations

import matplotlib.pyplot as plt

from ..balance_sim import SignRuleRun, simulate_sign_rule


def plot_sign_rule(runs: list[SignRuleRun], bias_of: SignRuleRun | None = None):
    """Left: MaxVio against step for each run (log scale). Right: every expert's bias in ``bias_of``."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, r in enumerate(runs):
        a.plot(range(1, len(r.maxvio) + 1), r.maxvio, color=f"C{i}", lw=1.2, label=f"gamma = {r.gamma:g}")
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("MaxVio of the batch")
    a.set_title(f"sign rule on a skewed router (skew = {runs[0].skew:g})")
    a.grid(alpha=0.3, which="both")
    a.legend(fontsize=8)
    r = bias_of if bias_of is not None else runs[-1]
    E = r.bias.size(1)
    cmap = plt.get_cmap("coolwarm")
    for e in range(E):
        b.plot(range(1, r.bias.size(0) + 1), r.bias[:, e].numpy(), color=cmap(e / max(E - 1, 1)), lw=1)
    b.set_xlabel("step")
    b.set_ylabel("bias b_i")
    b.set_title(f"biases, gamma = {r.gamma:g} (red: least preferred expert)")
    b.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def sign_rule_explorer(steps: int = 300, n_tokens: int = 1024, seed: int = 0) -> None:
    """Sliders for gamma (log scale) and the router's skew; the figure compares the chosen gamma with no
    balancing (gamma = 0) and shows the chosen run's biases."""
    import ipywidgets as widgets

    from .mla import interactive_figure

    style = dict(continuous_update=False, style={"description_width": "initial"})
    gamma = widgets.FloatLogSlider(value=1e-2, base=10, min=-4, max=-0.5, step=0.25, description="gamma",
                                   readout_format=".4f", **style)
    skew = widgets.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.25, description="router skew", **style)

    def figure():
        off = simulate_sign_rule(0.0, skew.value, steps, n_tokens, seed=seed)
        on = simulate_sign_rule(gamma.value, skew.value, steps, n_tokens, seed=seed)
        return plot_sign_rule([off, on], bias_of=on)

    interactive_figure([gamma, skew], figure)


def plot_bias_spread(runs: dict[str, tuple[list[dict], float]], ax=None, colors: dict[str, str] | None = None):
    """bias_max - bias_min against step for trained runs ``{name: (history, gamma)}``, with the speed limit
    2 * gamma * step (one expert can rise by gamma and another fall by gamma at every step).
    ``colors`` maps run names to matplotlib colors (default C0, C1, ...)."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    for i, (name, (hist, gamma)) in enumerate(runs.items()):
        color = (colors or {}).get(name, f"C{i}")
        steps = [r["step"] for r in hist]
        spread = [r["bias_spread"] if "bias_spread" in r else r["bias_max"] - r["bias_min"] for r in hist]
        ax.plot(steps, spread, color=color, label=name)
        ax.plot(steps, [2 * gamma * s for s in steps], ":", color=color, label=f"limit 2 gamma step, gamma = {gamma:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("bias spread, max b - min b")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
