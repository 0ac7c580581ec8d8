"""Load balancing for DeepSeekMoE: the auxiliary-loss-free bias update, balance losses, MaxVio.

DeepSeek-V3 balances experts mainly without a loss: each routed expert i has a bias b_i that is added to its
affinity *only when choosing* the top-k experts. After each training step, overloaded experts get
b_i -= gamma and underloaded ones b_i += gamma. A tiny complementary sequence-wise loss (alpha = 1e-4)
guards against extreme imbalance inside single sequences. The classic auxiliary loss (the same f_i * P_i
product over the whole batch, with a much larger alpha) is kept for the ablation.
"""
from __future__ import annotations

import torch
from torch import nn


def expert_load(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Tokens routed to each expert: indices (N, K) -> (E,) float."""
    return torch.bincount(indices.flatten(), minlength=n_experts).float()


def max_violation(load: torch.Tensor) -> torch.Tensor:
    """MaxVio = (max_i load_i - mean load) / mean load (0 = perfectly balanced)."""
    mean = load.float().mean(-1)
    return (load.float().amax(-1) - mean) / mean.clamp_min(1e-9)


@torch.no_grad()
def bias_update(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """The sign rule, in place: b_i += gamma * sign(mean load - load_i). Returns bias."""
    return bias.add_(gamma * torch.sign(load.float().mean() - load.float()))


def _normalized(scores: torch.Tensor) -> torch.Tensor:
    # s'_{i,t} = s_{i,t} / sum_j s_{j,t}
    return scores / scores.sum(-1, keepdim=True).clamp_min(1e-20)


def sequence_balance_loss(scores: torch.Tensor, indices: torch.Tensor, top_k: int, alpha: float) -> torch.Tensor:
    """Complementary sequence-wise balance loss, averaged over sequences.

    scores (B, T, E) affinities s (before any bias); indices (B, T, K) chosen experts.
    L = alpha * sum_i f_i P_i with f_i = E / (K T) * #{t: i chosen}, P_i = mean_t s'_{i,t}, per sequence.
    """
    B, T, E = scores.shape
    chosen = torch.zeros(B, E, device=scores.device).scatter_add_(
        1, indices.reshape(B, -1), torch.ones(B, T * top_k, device=scores.device))
    f = chosen * E / (top_k * T)                      # (B, E), no gradient: a count
    P = _normalized(scores).mean(1)                   # (B, E)
    return alpha * (f * P).sum(-1).mean()


def batch_aux_loss(scores: torch.Tensor, indices: torch.Tensor, top_k: int, alpha: float) -> torch.Tensor:
    """The classic auxiliary balance loss: the same f * P product over all tokens of the batch (N, E)."""
    N, E = scores.shape
    f = expert_load(indices, E) * E / (top_k * N)
    P = _normalized(scores).mean(0)
    return alpha * (f * P).sum()


def moe_gates(model: nn.Module) -> list[nn.Module]:
    """Every routing gate in the model, in layer order (MTP modules last)."""
    from .model.moe import Gate
    return [m for m in model.modules() if isinstance(m, Gate)]


@torch.no_grad()
def update_biases(model: nn.Module, gamma: float) -> dict:
    """After an optimizer step: apply the sign rule to every gate from the loads it counted since the last
    call, then reset the counts. Returns per-gate ``maxvio`` and ``loads`` (lists, layer order) and the
    bias range, for logging."""
    gates = moe_gates(model)
    vios, loads = [], []
    for g in gates:
        load = g.load_acc.clone()
        loads.append(load)
        vios.append(max_violation(load).item() if load.sum() > 0 else 0.0)
        if gamma > 0 and load.sum() > 0:
            bias_update(g.bias, load, gamma)
        g.load_acc.zero_()
    biases = torch.cat([g.bias for g in gates]) if gates else torch.zeros(1)
    return {"maxvio": vios, "loads": loads, "bias_min": biases.min().item(), "bias_max": biases.max().item()}
