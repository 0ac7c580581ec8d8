"""Load-balancing pictures (notebook 04): a synthetic skewed router driven by the sign rule, MaxVio curves
averaged over seeds, the bias spread against its speed limit, and an ipywidgets explorer.

The simulation uses the package's own pieces (``route``, ``expert_load``, ``max_violation``, ``bias_update``),
so what it shows is exactly what the trainer does after each step, minus the gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch

from ..balance import bias_update, expert_load, max_violation
from ..model.moe import route


def skewed_scores(n_tokens: int, n_experts: int, skew: float, generator: torch.Generator) -> torch.Tensor:
    """Sigmoid affinities (N, E) of a router that prefers low-numbered experts.

    Expert i's logit is N(0, 1) noise plus ``skew * (1 - 2 i / (E - 1))``: expert 0 gets +skew, the last -skew.
    skew = 0 is a fair router (it still shows sampling noise); skew ~ 1 makes the top experts several times busier.
    """
    if n_experts < 2:
        raise ValueError(f"n_experts must be >= 2, got {n_experts}")
    preference = skew * torch.linspace(1.0, -1.0, n_experts)                        # (E,)
    return (torch.randn(n_tokens, n_experts, generator=generator) + preference).sigmoid()  # (N, E)


@dataclass
class SignRuleRun:
    gamma: float
    skew: float
    maxvio: list[float]          # MaxVio of each step's batch, before that step's update
    bias: torch.Tensor           # (steps, E) bias after each step's update
    loads: torch.Tensor          # (steps, E) tokens per expert at each step


def simulate_sign_rule(gamma: float, skew: float = 1.0, steps: int = 300, n_tokens: int = 1024,
                       n_experts: int = 16, top_k: int = 4, seed: int = 0) -> SignRuleRun:
    """Route a fresh batch of skewed affinities each step with the current bias, count the load, record
    MaxVio, then apply the sign rule ``b_i += gamma * sign(mean load - load_i)``. No groups (one group)."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    g = torch.Generator().manual_seed(seed)
    bias = torch.zeros(n_experts)
    vios, biases, loads = [], [], []
    for _ in range(steps):
        scores = skewed_scores(n_tokens, n_experts, skew, g)                          # (N, E)
        _, indices = route(scores, bias, top_k, n_groups=1, topk_groups=1, route_scale=1.0)   # (N, K)
        load = expert_load(indices, n_experts)                                        # (E,)
        vios.append(max_violation(load).item())
        bias_update(bias, load, gamma)                                                # in place
        biases.append(bias.clone())
        loads.append(load)
    return SignRuleRun(gamma, skew, vios, torch.stack(biases), torch.stack(loads))


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


def sign_rule_explorer(steps: int = 300, n_tokens: int = 1024, seed: int = 0):
    """Sliders for gamma (log scale) and the router's skew; the figure compares the chosen gamma with no
    balancing (gamma = 0) and shows the chosen run's biases. Returns an ``Explorer`` (last in a cell shows it)."""
    import ipywidgets as widgets

    from .explore import interactive_figure

    style = dict(continuous_update=False, style={"description_width": "initial"})
    gamma = widgets.FloatLogSlider(value=1e-2, base=10, min=-4, max=-0.5, step=0.25, description="gamma",
                                   readout_format=".4f", **style)
    skew = widgets.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.25, description="router skew", **style)

    def figure():
        off = simulate_sign_rule(0.0, skew.value, steps, n_tokens, seed=seed)
        on = simulate_sign_rule(gamma.value, skew.value, steps, n_tokens, seed=seed)
        return plot_sign_rule([off, on], bias_of=on)

    return interactive_figure([gamma, skew], figure)


def mean_history(histories: list[list[dict]]) -> list[dict]:
    """Average the logged rows of several seeds of one run, row by row: ``step`` and per-gate ``maxvio``,
    plus ``bias_spread`` = bias_max - bias_min. The result feeds ``viz.training.plot_maxvio``."""
    if not histories:
        raise ValueError("mean_history needs at least one history")
    n = min(len(h) for h in histories)
    rows = []
    for j in range(n):
        group = [h[j] for h in histories]
        n_gates = len(group[0]["maxvio"])
        rows.append({
            "step": group[0]["step"],
            "maxvio": [sum(r["maxvio"][g] for r in group) / len(group) for g in range(n_gates)],
            "bias_spread": sum(r["bias_max"] - r["bias_min"] for r in group) / len(group),
        })
    return rows


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
