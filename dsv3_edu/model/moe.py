"""DeepSeekMoE: fine-grained routed experts + always-on shared experts, sigmoid gating, group-limited top-k.

Routing for one token with hidden u (from the reference inference code and the report):
  s_i = sigmoid(u . e_i)                                    affinity of routed expert i
  choose with s_i + b_i: keep the best ``n_limited_groups`` groups (group score = sum of its top-2),
  then the top-K_r experts inside them            (b only *chooses*; it never weights)
  g_i = s_i / sum_{chosen j} s_j * route_scale             gating weight of a chosen expert
  y = u + sum shared FFN(u) + sum_{chosen i} g_i FFN_i(u)   (residual added by the Block)
No tokens are dropped. Experts run as one grouped GEMM over tokens sorted by expert.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..balance import batch_aux_loss, expert_load, sequence_balance_loss
from ..config import ModelConfig
from .linear import Linear


class MLP(nn.Module):
    """SwiGLU feed-forward: w2(silu(w1 x) * w3 x). Dense layers and shared experts."""

    def __init__(self, dim: int, inter_dim: int, fp8: bool = False):
        super().__init__()
        self.w1 = Linear(dim, inter_dim, fp8)
        self.w2 = Linear(inter_dim, dim, fp8)
        self.w3 = Linear(dim, inter_dim, fp8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def route(scores: torch.Tensor, bias: torch.Tensor | None, top_k: int, n_groups: int, topk_groups: int,
          route_scale: float, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-limited top-k selection. scores (N, E) affinities -> weights (N, K), indices (N, K).

    The bias (E,) is added for choosing only; the weights come from the unbiased scores.
    """
    choice = scores if bias is None else scores + bias                      # (N, E)
    if n_groups > 1:
        grouped = choice.view(choice.size(0), n_groups, -1)                 # (N, G, E/G)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)               # (N, G)
        keep = group_scores.topk(topk_groups, dim=-1).indices               # (N, topk_groups)
        dropped = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
        choice = grouped.masked_fill(dropped.unsqueeze(-1), float("-inf")).flatten(1)
    indices = choice.topk(top_k, dim=-1).indices                            # (N, K)
    weights = scores.gather(1, indices)                                     # (N, K)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights * route_scale, indices


class Gate(nn.Module):
    """Router: affinities and the selection bias b (a buffer, not trained by gradients)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.dim))  # centroids e_i
        self.register_buffer("bias", torch.zeros(cfg.n_routed_experts))        # b_i, saved with the model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, d) -> weights (N, K), indices (N, K), scores (N, E). Routing runs in float32."""
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid() if self.cfg.score_func == "sigmoid" else logits.softmax(-1)
        use_bias = self.cfg.balance == "aux_free"
        weights, indices = route(scores, self.bias if use_bias else None, self.cfg.n_activated_experts,
                                 self.cfg.n_expert_groups, self.cfg.n_limited_groups, self.cfg.route_scale,
                                 normalize=self.cfg.score_func == "sigmoid")
        return weights, indices, scores


def grouped_mm(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows of x sorted by group, ``counts[g]`` rows in group g: returns x_g @ w[g]^T stacked (N, out).

    Uses ``torch.nn.functional.grouped_mm`` (one kernel for all experts) where the build has it; otherwise a
    padded batched matmul: rows are scattered into an (E, max_count, in) buffer and multiplied with torch.bmm.
    """
    if _HAS_GROUPED_MM and x.device.type in ("cpu", "cuda") and x.dtype == w.dtype:
        try:
            return F.grouped_mm(x, w.transpose(1, 2), offs=counts.cumsum(0).to(torch.int32))
        except RuntimeError:  # unsupported dtype/alignment on this device: use the fallback
            pass
    return padded_grouped_mm(x, w, counts)


def padded_grouped_mm(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    E = w.size(0)
    group = torch.repeat_interleave(torch.arange(E, device=x.device), counts)   # (N,) group of each row
    pos = torch.arange(x.size(0), device=x.device) - (counts.cumsum(0) - counts)[group]
    buf = x.new_zeros(E, int(counts.max()) if x.size(0) else 0, x.size(1))
    buf[group, pos] = x
    return torch.bmm(buf, w.transpose(1, 2))[group, pos]


_HAS_GROUPED_MM = hasattr(F, "grouped_mm")


class Experts(nn.Module):
    """All routed experts' SwiGLU weights stacked: w1, w3 (E, I, d) and w2 (E, d, I)."""

    def __init__(self, n_experts: int, dim: int, inter_dim: int, fp8: bool = False):
        super().__init__()
        self.fp8 = fp8
        self.w1 = nn.Parameter(torch.empty(n_experts, inter_dim, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, inter_dim))
        self.w3 = nn.Parameter(torch.empty(n_experts, inter_dim, dim))

    def _mm(self, x, w, counts):
        if self.fp8:
            from ..fp8.simulate import qdq_act, qdq_grad, qdq_weight
            return qdq_grad(grouped_mm(qdq_act(x), qdq_weight(w), counts))
        return grouped_mm(x, w, counts)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x (N, d), weights/indices (N, K) -> sum_k weights[:, k] * FFN_{indices[:, k]}(x)  (N, d)."""
        N, K = indices.shape
        flat = indices.flatten()                                   # (N*K,) expert of each (token, slot)
        order = flat.argsort(stable=True)                          # sort slots by expert
        token = order // K                                         # token of each sorted slot
        counts = torch.bincount(flat, minlength=self.w1.size(0))   # (E,)
        xs = x[token]                                              # (N*K, d) tokens, grouped by expert
        h = F.silu(self._mm(xs, self.w1, counts)) * self._mm(xs, self.w3, counts)   # (N*K, I)
        out = self._mm(h, self.w2, counts) * weights.flatten()[order].unsqueeze(-1).to(x.dtype)
        return torch.zeros_like(x).index_add_(0, token, out)       # (N, d)


@dataclass
class Routing:
    """What one MoE forward chose, returned with its output (never stored on the module): the trainer sums
    ``load`` over a step's micro-batches for the aux-loss-free bias update (``balance.update_biases``)."""
    indices: torch.Tensor                     # (B, T, K) chosen experts
    load: torch.Tensor                        # (E,) tokens per expert (float)
    balance_loss: torch.Tensor | None = None  # this layer's balance-loss term (training forwards only)


class MoE(nn.Module):
    """The DeepSeekMoE layer: always-on shared experts plus the K routed experts the gate chooses per token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = Gate(cfg)
        self.experts = Experts(cfg.n_routed_experts, cfg.dim, cfg.moe_inter_dim, cfg.fp8)
        self.shared_experts = (MLP(cfg.dim, cfg.n_shared_experts * cfg.moe_inter_dim, cfg.fp8)
                               if cfg.n_shared_experts > 0 else None)

    def forward(self, x: torch.Tensor, return_routing: bool = False):
        """x (B, T, d) -> y (B, T, d), or (y, Routing) with ``return_routing``."""
        B, T, d = x.shape
        flat = x.reshape(-1, d)                                    # (N, d)
        weights, indices, scores = self.gate(flat)                 # (N, K), (N, K), (N, E)
        y = self.experts(flat, weights, indices)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        y = y.view(B, T, d)
        return (y, self.routing(scores, indices, B, T)) if return_routing else y

    def routing(self, scores: torch.Tensor, indices: torch.Tensor, B: int, T: int) -> Routing:
        """Load counts and (when training) the balance-loss term, from scores (N, E) and indices (N, K)."""
        cfg = self.cfg
        out = Routing(indices=indices.view(B, T, -1), load=expert_load(indices, cfg.n_routed_experts))
        if not self.training:
            return out
        if cfg.balance == "aux_free" and cfg.seq_aux_alpha > 0:
            out.balance_loss = sequence_balance_loss(scores.view(B, T, -1), indices.view(B, T, -1),
                                                     cfg.n_activated_experts, cfg.seq_aux_alpha)
        elif cfg.balance == "aux_loss" and cfg.aux_loss_alpha > 0:
            out.balance_loss = batch_aux_loss(scores, indices, cfg.n_activated_experts, cfg.aux_loss_alpha)
        return out
