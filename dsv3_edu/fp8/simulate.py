"""FP8-simulated training GEMMs: what the model calls when ``fp8=True``.

A real FP8 GEMM takes FP8 inputs and accumulates in FP32. On a CPU (or any GPU) we get the same numbers, up to
the accumulation order, by rounding the GEMM *inputs* onto the FP8 grid ("quantize -> dequantize", qdq) and
running an ordinary matmul on the rounded values. As in the report's recipe (Figure 6):

* forward  Fprop: y = x_q @ w_q^T, x per 1x128 tile, w per 128x128 block (E4M3);
* backward Dgrad: dx = dy_q @ w_q and Wgrad: dw = dy_q^T @ x_q, where dy_q is the output gradient rounded
  per 1x128 tile (E4M3 for gradients too: the report uses E4M3 everywhere, not the E5M2 of hybrid recipes).

Rounding has no useful derivative (it is flat almost everywhere), so the qdq ops pass gradients straight
through (the straight-through estimator): the gradient treats rounding as the identity. Master weights and
optimizer states stay in high precision; only the GEMM operands are rounded.

Scales: amax / 448 per group; with ``scale_fmt="ue8m0"`` (``ModelConfig.scale_fmt``, DeepSeek's later configs)
rounded up to a power of two. The amax floor: activations and weights take the reference's 1e-4
(``quant.AMAX_EPS``, from its inference ``act_quant``); output gradients take ``GRAD_AMAX_EPS`` = 1e-12, a
floor that only prevents 0 / 0. Gradients are small: in the nano model at initialization (batch 8 x 32), two
thirds of the gradient tiles have amax < 1e-4 and a tenth < 3.5e-7, which the 1e-4 floor would push into the
subnormals or flush to zero. The report's training recipe scales gradients online per tile with no such floor.

Special values propagate as in the reference kernel (see ``quant.act_quant``): a NaN stays NaN, an inf turns its
tile into NaN, and the trainer stops with "the loss became nan" (``TrainingDiverged``).

Simplification: the report quantizes x and dy for the Wgrad GEMM along the token dimension (its contraction
dim there); here each tensor is rounded once, per 1x128 tile along its last dim, and reused in both GEMMs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quant import AMAX_EPS, quant_dequant

GRAD_AMAX_EPS = 1e-12   # the amax floor for output gradients (see the module docstring)


def _qdq(x: torch.Tensor, method: str, fmt: str, scale_fmt: str | None = None,
         amax_eps: float = AMAX_EPS) -> torch.Tensor:
    """x rounded onto the FP8 grid of ``method`` (tile_1x128 / block_128x128), back in x's dtype."""
    return quant_dequant(x, method, fmt, amax_eps=amax_eps, scale_fmt=scale_fmt).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    """forward: qdq(x); backward: the gradient, unchanged."""

    @staticmethod
    def forward(ctx, x, method, fmt, scale_fmt):
        return _qdq(x, method, fmt, scale_fmt)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


class _QuantizeGrad(torch.autograd.Function):
    """forward: identity; backward: the incoming gradient rounded per 1x128 tile."""

    @staticmethod
    def forward(ctx, y, fmt, scale_fmt):
        ctx.fmt, ctx.scale_fmt = fmt, scale_fmt
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        return _qdq(grad, "tile_1x128", ctx.fmt, ctx.scale_fmt, GRAD_AMAX_EPS), None, None


def qdq_act(x: torch.Tensor, fmt: str = "e4m3", scale_fmt: str | None = None) -> torch.Tensor:
    """Round x (..., K) per 1x128 tile of the last dim to FP8 and back; gradient passes straight through."""
    return _StraightThrough.apply(x, "tile_1x128", fmt, scale_fmt)


def qdq_weight(w: torch.Tensor, fmt: str = "e4m3", scale_fmt: str | None = None) -> torch.Tensor:
    """Round w (..., out, in) per 128x128 block of the last two dims (experts: (E, out, in)); straight-through."""
    return _StraightThrough.apply(w, "block_128x128", fmt, scale_fmt)


def qdq_grad(y: torch.Tensor, fmt: str = "e4m3", scale_fmt: str | None = None) -> torch.Tensor:
    """Identity forward; in backward, the gradient w.r.t. y is rounded per 1x128 tile, so the two backward
    GEMMs that consume it (Dgrad, Wgrad) get FP8 inputs."""
    return _QuantizeGrad.apply(y, fmt, scale_fmt)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale_fmt: str | None = None) -> torch.Tensor:
    """F.linear(x, weight) (no bias) with all three GEMMs on FP8-rounded inputs: x (..., in), weight (out, in)
    -> (..., out). ``scale_fmt``: None (float32 scales) or "ue8m0" (power-of-two scales)."""
    return qdq_grad(F.linear(qdq_act(x, scale_fmt=scale_fmt), qdq_weight(weight, scale_fmt=scale_fmt)),
                    scale_fmt=scale_fmt)


class Fp8Linear(nn.Linear):
    """Drop-in for ``nn.Linear(in_features, out_features, bias=False)`` whose GEMMs are FP8-simulated."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None,
                 scale_fmt: str | None = None):
        if bias:
            raise ValueError("Fp8Linear has no bias (bias=True given); DeepSeek-V3's linear layers have none")
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.scale_fmt = scale_fmt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.scale_fmt)
