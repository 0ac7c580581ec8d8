"""The one Linear used by the model: bias-free, optionally with FP8-simulated GEMMs (see dsv3_edu.fp8)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Linear):
    """``nn.Linear`` without bias. With ``fp8=True`` the GEMM inputs (activations per 1x128 tile, weights per
    128x128 block, and the output gradient in backward) are rounded to E4M3 as in the report's FP8 recipe."""

    scale_fmt: str | None = None  # FP8 scale format (cfg.scale_fmt), set by Transformer.__init__

    def __init__(self, in_features: int, out_features: int, fp8: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.fp8 = fp8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8:
            from ..fp8.simulate import fp8_linear  # lazy: keeps triton out of the plain model's import
            return fp8_linear(x, self.weight, self.scale_fmt)
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", fp8=True" if self.fp8 else "")
