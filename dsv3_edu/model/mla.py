"""Multi-head Latent Attention (MLA), as in DeepSeek-V2/V3.

Keys and values are rebuilt per head from one small latent c_KV (d_c = kv_lora_rank) per token, and a single
RoPE key k^R (d_h^R) is shared by all heads. Only (c_KV, k^R) need caching: d_c + d_h^R numbers per token
per layer instead of 2 * n_h * d_h for multi-head attention.

Two equivalent ways to compute attention:
- ``naive``: materialise K = [W_UK c_KV; k^R] and V = W_UV c_KV per head, then ordinary attention.
- ``absorbed``: fold W_UK into the query (q^C W_UK^T lives in latent space) and W_UV after the softmax, so
  attention runs directly over the cached latents. RoPE sits between q and k, so it cannot be absorbed:
  that is why the RoPE part is decoupled into separate dimensions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import ModelConfig
from .linear import Linear
from .norm import RMSNorm
from .rope import apply_rotary_emb, yarn_mscale

ATTN_MODES = ("naive", "absorbed")


class KVCache:
    """Per-layer cache of named tensors (B, S_max, ...), written at [start_pos, start_pos + T)."""

    def __init__(self, max_batch: int, max_len: int):
        self.max_batch, self.max_len = max_batch, max_len
        self.store: dict[str, torch.Tensor] = {}

    def append(self, name: str, start_pos: int, t: torch.Tensor) -> torch.Tensor:
        """Write t (B, T, ...) at start_pos; return everything cached so far (B, start_pos + T, ...)."""
        B, T = t.shape[:2]
        end = start_pos + T
        if B > self.max_batch or end > self.max_len:
            raise ValueError(f"KV cache holds batch {self.max_batch} x {self.max_len} positions; "
                             f"asked for batch {B}, positions up to {end}")
        buf = self.store.get(name)
        if buf is None or buf.dtype != t.dtype or buf.device != t.device:
            buf = t.new_zeros(self.max_batch, self.max_len, *t.shape[2:])
            self.store[name] = buf
        buf[:B, start_pos:end] = t.detach()
        return buf[:B, :end]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.store.values())


def causal_mask(T: int, S: int, start_pos: int, device) -> torch.Tensor:
    """(T, S) bool, True where query i (at position start_pos + i) may attend key j."""
    i = torch.arange(T, device=device)[:, None] + start_pos
    j = torch.arange(S, device=device)[None, :]
    return j <= i


class MLA(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q_lora_rank, self.kv_lora_rank = cfg.q_lora_rank, cfg.kv_lora_rank
        self.nope_dim, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        qk_head_dim = cfg.qk_head_dim
        if self.q_lora_rank == 0:
            self.wq = Linear(cfg.dim, cfg.n_heads * qk_head_dim, cfg.fp8)
        else:
            self.wq_a = Linear(cfg.dim, self.q_lora_rank, cfg.fp8)                  # W_DQ
            self.q_norm = RMSNorm(self.q_lora_rank, cfg.norm_eps)
            self.wq_b = Linear(self.q_lora_rank, cfg.n_heads * qk_head_dim, cfg.fp8)  # [W_UQ; W_QR]
        self.wkv_a = Linear(cfg.dim, self.kv_lora_rank + self.rope_dim, cfg.fp8)    # [W_DKV; W_KR]
        self.kv_norm = RMSNorm(self.kv_lora_rank, cfg.norm_eps)
        self.wkv_b = Linear(self.kv_lora_rank, cfg.n_heads * (self.nope_dim + self.v_dim), cfg.fp8)  # [W_UK; W_UV]
        self.wo = Linear(cfg.n_heads * self.v_dim, cfg.dim, cfg.fp8)
        self.softmax_scale = qk_head_dim ** -0.5
        if cfg.max_seq_len > cfg.original_seq_len:  # YaRN: sharpen the softmax by mscale^2
            self.softmax_scale *= yarn_mscale(cfg.rope_factor, cfg.mscale) ** 2

    def queries(self, x: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q^C (B, T, H, d_h) and RoPE'd q^R (B, T, H, d_h^R)."""
        q = self.wq(x) if self.q_lora_rank == 0 else self.wq_b(self.q_norm(self.wq_a(x)))
        q = rearrange(q, "b t (h d) -> b t h d", h=self.n_heads)
        q_nope, q_pe = q.split([self.nope_dim, self.rope_dim], dim=-1)
        return q_nope, apply_rotary_emb(q_pe, freqs_cis)

    def latents(self, x: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised c_KV (B, T, d_c) and the shared RoPE'd key k^R (B, T, d_h^R): all that MLA caches."""
        kv, k_pe = self.wkv_a(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        k_pe = apply_rotary_emb(k_pe.unsqueeze(2), freqs_cis).squeeze(2)
        return self.kv_norm(kv), k_pe

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor, start_pos: int = 0,
                cache: KVCache | None = None, mode: str = "naive") -> torch.Tensor:
        """x (B, T, d); freqs_cis (T, d_h^R/2) for positions start_pos..start_pos+T-1."""
        if mode not in ATTN_MODES:
            raise ValueError(f"attention mode must be one of {ATTN_MODES}, got {mode!r}")
        B, T, _ = x.shape
        q_nope, q_pe = self.queries(x, freqs_cis)                      # (B, T, H, d_h), (B, T, H, d_h^R)
        kv, k_pe = self.latents(x, freqs_cis)                          # (B, T, d_c), (B, T, d_h^R)
        if mode == "naive":
            out = self._naive(q_nope, q_pe, kv, k_pe, start_pos, cache)
        else:
            out = self._absorbed(q_nope, q_pe, kv, k_pe, start_pos, cache)
        return self.wo(rearrange(out, "b t h d -> b t (h d)"))

    def _naive(self, q_nope, q_pe, kv, k_pe, start_pos, cache):
        B, T, H, _ = q_nope.shape
        k_nope, v = rearrange(self.wkv_b(kv), "b s (h d) -> b s h d", h=H).split([self.nope_dim, self.v_dim], -1)
        k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, H, -1)], dim=-1)  # (B, T, H, d_h + d_h^R)
        q = torch.cat([q_nope, q_pe], dim=-1)                                      # (B, T, H, d_h + d_h^R)
        if cache is not None:  # a naive cache holds full per-head K and V, like MHA
            k, v = cache.append("k", start_pos, k), cache.append("v", start_pos, v)
        S = k.size(1)
        q, k, v = (rearrange(t, "b s h d -> b h s d") for t in (q, k, v))
        if T == 1:
            mask, causal = None, False
        elif start_pos == 0 and S == T:
            mask, causal = None, True
        else:
            mask, causal = causal_mask(T, S, start_pos, q.device), False
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.softmax_scale)
        return rearrange(o, "b h t d -> b t h d")                                  # (B, T, H, d_v)

    def _absorbed(self, q_nope, q_pe, kv, k_pe, start_pos, cache):
        T = q_nope.size(1)
        w = rearrange(self.wkv_b.weight, "(h d) c -> h d c", h=self.n_heads)      # (H, d_h + d_v, d_c)
        w_uk, w_uv = w[:, :self.nope_dim], w[:, self.nope_dim:]
        q_lat = torch.einsum("bthd,hdc->bthc", q_nope, w_uk)                      # (B, T, H, d_c): W_UK absorbed
        if cache is not None:
            kv, k_pe = cache.append("kv", start_pos, kv), cache.append("pe", start_pos, k_pe)
        scores = (torch.einsum("bthc,bsc->bhts", q_lat, kv)
                  + torch.einsum("bthr,bsr->bhts", q_pe, k_pe)) * self.softmax_scale   # (B, H, T, S)
        if T > 1:
            scores = scores.masked_fill(~causal_mask(T, kv.size(1), start_pos, scores.device), float("-inf"))
        probs = scores.float().softmax(-1).to(kv.dtype)
        o_lat = torch.einsum("bhts,bsc->bthc", probs, kv)                          # (B, T, H, d_c)
        return torch.einsum("bthc,hdc->bthd", o_lat, w_uv)                         # W_UV absorbed: (B, T, H, d_v)
