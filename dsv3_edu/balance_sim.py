"""The aux-loss-free sign rule on a synthetic skewed router (notebook 04): route a fresh batch each step with the
current bias, count the load, apply ``b_i += gamma * sign(mean load - load_i)``.

It uses the package's own pieces (``route``, ``expert_load``, ``max_violation``, ``bias_update``), so what it
shows is exactly what the trainer does after each step, minus the gradients. Pictures: ``dsv3_edu.viz.balance``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .balance import bias_update, expert_load, max_violation
from .model.moe import route


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
