"""Rotary position embedding with YaRN context extension, as in DeepSeek's reference code.

RoPE rotates consecutive pairs (x0, x1), (x2, x3), ... of a vector by angle ``pos * freq_j``. We keep the
rotation as complex numbers ``freqs_cis = exp(i * pos * freq_j)`` so applying it is one complex multiply.
YaRN (used by DeepSeek-V3 to go 4K -> 32K -> 128K) keeps high frequencies (that rotate many times within
the original context) as they are, divides low frequencies by the factor ``s``, and ramps linearly between;
attention logits are then scaled by ``mscale^2`` (see ``yarn_mscale``).
"""
from __future__ import annotations

import math

import torch

from ..config import ModelConfig


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature fix: 0.1 * mscale * ln(s) + 1 (1 when no scaling)."""
    return 1.0 if factor <= 1.0 else 0.1 * mscale * math.log(factor) + 1.0


def _correction_dim(num_rotations: float, dim: int, base: float, max_seq_len: int) -> float:
    # the pair index j whose wavelength fits ``num_rotations`` times into max_seq_len
    return dim * math.log(max_seq_len / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_correction_range(beta_fast: float, beta_slow: float, dim: int, base: float,
                          max_seq_len: int) -> tuple[int, int]:
    low = math.floor(_correction_dim(beta_fast, dim, base, max_seq_len))
    high = math.ceil(_correction_dim(beta_slow, dim, base, max_seq_len))
    return max(low, 0), min(high, dim - 1)


def rope_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """Per-pair angular frequencies (d_h^R / 2,), YaRN-interpolated when max_seq_len > original_seq_len."""
    dim, base = cfg.qk_rope_head_dim, cfg.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if cfg.max_seq_len > cfg.original_seq_len:
        low, high = yarn_correction_range(cfg.beta_fast, cfg.beta_slow, dim, base, cfg.original_seq_len)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        keep = 1 - ramp  # 1 for fast (high-frequency) pairs: extrapolate; 0 for slow ones: interpolate
        freqs = freqs / cfg.rope_factor * (1 - keep) + freqs * keep
    return freqs


def precompute_freqs_cis(cfg: ModelConfig, seq_len: int | None = None) -> torch.Tensor:
    """Complex rotations exp(i * t * freq) for t < seq_len: (seq_len, d_h^R / 2) complex64."""
    seq_len = seq_len or cfg.max_seq_len
    t = torch.arange(seq_len, dtype=torch.float32)
    angles = torch.outer(t, rope_frequencies(cfg))
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of the last dim of x (B, T, H, d) by freqs_cis (T, d/2)."""
    dtype = x.dtype
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))     # (B, T, H, d/2)
    freqs_cis = freqs_cis.view(1, xc.size(1), 1, xc.size(-1))
    return torch.view_as_real(xc * freqs_cis).flatten(3).to(dtype)
