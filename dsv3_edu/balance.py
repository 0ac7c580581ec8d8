"""Load balancing for DeepSeekMoE: the auxiliary-loss-free bias update, balance losses, MaxVio.

DeepSeek-V3 balances experts mainly without a loss: each routed expert i has a bias b_i that is added to its
affinity *only when choosing* the top-k experts. After each training step, overloaded experts get
b_i -= gamma and underloaded ones b_i += gamma. A tiny complementary sequence-wise loss (alpha = 1e-4)
guards against extreme imbalance inside single sequences. The classic auxiliary loss (the same f_i * P_i
product over the whole batch, with a much larger alpha) is kept for the ablation.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
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


@torch.no_grad()
def update_biases(model: nn.Module, loads: list[torch.Tensor], gamma: float) -> None:
    """The aux-loss-free update after an optimizer step: the sign rule on every gate of ``model`` (a
    ``Transformer``: ``model.gates()``) from ``loads``, one (E,) tensor per gate in that order, the tokens each
    expert received during the step (``ModelOutput.loads`` summed over the step's micro-batches, and over
    ranks with data or expert parallelism: ``reduce_loads``). A function of the loads it is given: no counts
    are kept on the model, so extra forward passes never change the update. No host synchronisation."""
    gates = model.gates()
    if len(loads) != len(gates):
        raise ValueError(f"update_biases: {len(loads)} load vectors for {len(gates)} gates; pass the summed "
                         "ModelOutput.loads of training forwards (the MTP modules run in training)")
    if gamma > 0:
        for gate, load in zip(gates, loads):
            bias_update(gate.bias, load, gamma)   # a gate that saw no token: sign(0) = 0, no change


def reduce_loads(loads: list[torch.Tensor], group=None) -> list[torch.Tensor]:
    """Sum each (E,) load over the ranks of ``group`` (all-reduce), so that every rank applies the same bias
    update to its replicated gates; the loads unchanged when torch.distributed is not initialized."""
    if not (dist.is_available() and dist.is_initialized()) or not loads:
        return loads
    flat = torch.stack(loads)                          # one collective for all gates
    dist.all_reduce(flat, group=group)
    return list(flat.unbind(0))


@torch.no_grad()
def balance_stats(model: nn.Module, loads: list[torch.Tensor]) -> dict:
    """For logging: per-gate MaxVio of ``loads`` and the range of all selection biases, as Python numbers
    (one host synchronisation)."""
    biases = [g.bias for g in model.gates()]
    if not biases:
        return {"maxvio": [], "bias_min": 0.0, "bias_max": 0.0}
    allb = torch.cat(biases)
    vals = torch.stack([max_violation(load) for load in loads] + [allb.min(), allb.max()]).tolist()
    return {"maxvio": vals[:-2], "bias_min": vals[-2], "bias_max": vals[-1]}
