"""Reference FP8 quantization in plain torch: the recipe of DeepSeek-V3 (report section 3.3) and its baselines.

Fine-grained scaling, computed online from the current max |x| ("amax") of each group:

* activations: one scale per 1x128 **tile** (one token, 128 consecutive channels of the last dim)
* weights:     one scale per 128x128 **block** (of the last two dims: out x in)
* ``scale = amax / 448`` for E4M3, so the largest element of each group lands exactly on 448.

Quantize: ``x_fp8 = fp8(x / scale)``; dequantize: ``x ~= x_fp8 * scale``. The weights' scale is stored as
``weight_scale_inv`` in DeepSeek's checkpoints and reference code (``inference/kernel.py``): it is the same
amax / 448, the number you *multiply* by to dequantize.

Why small groups: one outlier sets the scale of its whole group, and E4M3 spans only 2^-9 .. 448 (normals
from 2^-6: about 4.5 decades). With one scale per tensor, a channel 10^4-10^5 times larger than the others
pushes the ordinary values down into the subnormals (3 bits, then 2, 1...) or to zero. (A 100x outlier does
little harm: E4M3's range absorbs it.) With 1x128 tiles the outlier only costs precision to the 127 neighbours
in its own tile. ``quant_error(x, method, metric="mean")`` measures it.

The torch functions here are the single source of truth: the Triton kernels (``kernels.py``) are tested
against them bit-for-bit, and the FP8-simulated training (``simulate.py``) calls them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .formats import fp8_dtype, fp8_max

# amax floor, as in DeepSeek's reference ``act_quant_kernel`` (``amax = tl.maximum(amax, 1e-4)``): a group whose
# max |x| is below 1e-4 (an all-zero tile, a padded tail, a tiny tile) gets scale 1e-4 / 448. So x / scale never
# divides by zero, and a tile of values much smaller than 1e-4 is flushed towards zero: a 1e-10 tile becomes
# 1e-10 / (1e-4 / 448) = 4.5e-4 on the FP8 grid, below half the smallest E4M3 subnormal (2^-9 = 0.00195),
# so it is stored as zeros. Pass ``amax_eps`` to change it (1e-12 keeps such tiles, the package's old default).
AMAX_EPS = 1e-4

# "ue8m0": scales rounded *up* to a power of two (an 8-bit exponent, no mantissa), DeepSeek's later configs
# (``"scale_fmt": "ue8m0"`` in config_v3.1.json); None: the plain float32 amax / 448.
SCALE_FMTS = (None, "ue8m0")

SCALINGS = ("per_tensor", "per_row", "tile_1x128", "block_128x128")


def _check_block(block: int) -> int:
    if not isinstance(block, int) or block <= 0:
        raise ValueError(f"block must be a positive int, got {block!r}")
    return block


def check_scale_args(fmt: str, amax_eps: float, scale_fmt: str | None) -> None:
    """Refuse a scale format other than None / "ue8m0", and an amax floor whose scale would not be a normal
    float32 (the power-of-two rounding works on the exponent bits)."""
    if scale_fmt not in SCALE_FMTS:
        raise ValueError(f"scale_fmt must be None (float32 scales) or 'ue8m0' (power-of-two scales), "
                         f"got {scale_fmt!r}")
    tiny = torch.finfo(torch.float32).tiny * fp8_max(fmt)
    if not (isinstance(amax_eps, (int, float)) and math.isfinite(amax_eps) and amax_eps >= tiny):
        raise ValueError(f"amax_eps must be a finite number >= {tiny:.3g} (so amax_eps / {fp8_max(fmt):g} is a "
                         f"normal float32), got {amax_eps!r}")


def group_amax(x: torch.Tensor, dim) -> torch.Tensor:
    """max |x| over ``dim``, NaN ignored (a NaN element counts as 0), +-inf kept.

    This is what the reference kernel gets on a GPU: ``tl.max`` compiles to the hardware max, which returns the
    non-NaN operand. So a NaN stays a NaN in its own element but does not poison its tile's scale.
    """
    a = x.abs()
    return torch.where(torch.isnan(a), torch.zeros_like(a), a).amax(dim)


def round_scale_ue8m0(s: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= s, for positive normal float32 s (inf stays inf).

    Exact, on the bits: adding 2^23 - 1 to the bit pattern carries into the exponent field unless the mantissa
    is already 0 (s already a power of two); then clear the mantissa. The reference computes
    ``exp2(ceil(log2(s)))``, the same number wherever log2 is correctly rounded.
    """
    bits = s.float().contiguous().view(torch.int32)
    return ((bits + 0x7FFFFF) & -0x800000).view(torch.float32)   # -0x800000 = ~0x7FFFFF: the sign + exponent bits


def amax_to_scale(amax: torch.Tensor, fmt: str = "e4m3", amax_eps: float = AMAX_EPS,
                  scale_fmt: str | None = None) -> torch.Tensor:
    """scale = max(amax, amax_eps) / fp8_max in float32 (the largest |x| of the group maps to 448 for E4M3);
    with ``scale_fmt="ue8m0"`` rounded up to a power of two (the largest |x| then maps into [224, 448])."""
    check_scale_args(fmt, amax_eps, scale_fmt)
    s = amax.float().clamp(min=amax_eps) / fp8_max(fmt)
    return round_scale_ue8m0(s) if scale_fmt == "ue8m0" else s


def cast_to_fp8(y: torch.Tensor, fmt: str = "e4m3") -> torch.Tensor:
    """Round float32 values already divided by their scale to FP8 (round to nearest even), saturating at
    +-fp8_max (the clamp guards a last-bit overshoot of x / scale; the hardware's cast saturates the same way).
    NaN stays NaN, as the canonical byte 0x7F whatever its sign (the GPU's cast does the same; a CPU's 0/0 is
    a negative NaN, which torch would store as 0xFF)."""
    m = fp8_max(fmt)
    y = y.clamp(-m, m)
    return torch.where(torch.isnan(y), math.nan, y).to(fp8_dtype(fmt))   # math.nan: a positive NaN


# ---------------------------------------------------------------------------------------------------------
# activations: 1 x block tiles along the last dim
# ---------------------------------------------------------------------------------------------------------
def act_quant(x: torch.Tensor, block: int = 128, fmt: str = "e4m3", amax_eps: float = AMAX_EPS,
              scale_fmt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize per 1 x ``block`` tile of the last dim (``amax_eps``, ``scale_fmt``: see :func:`amax_to_scale`).

    x (..., K) any float dtype -> x_fp8 (..., K) float8, scale (..., ceil(K / block)) float32.
    K need not be a multiple of ``block``: the last tile is zero-padded for its amax (zeros never raise it).
    Special values, as the reference kernel on a GPU: a NaN stays NaN in its element and is ignored by the
    tile's amax; a +-inf makes the tile's scale inf, so the tile's finite elements become 0 and the inf a NaN
    (dequantized, the whole tile is NaN: 0 * inf); -0.0 stays -0.0.
    """
    _check_block(block)
    if x.dim() == 0 or x.size(-1) == 0:
        raise ValueError(f"act_quant needs x of shape (..., K) with K > 0, got {tuple(x.shape)}")
    K = x.size(-1)
    nb = math.ceil(K / block)
    xp = F.pad(x.float(), (0, nb * block - K))              # (..., nb*block)
    tiles = xp.unflatten(-1, (nb, block))                   # (..., nb, block)
    scale = amax_to_scale(group_amax(tiles, -1), fmt, amax_eps, scale_fmt)   # (..., nb)
    y = cast_to_fp8(tiles / scale.unsqueeze(-1), fmt)       # (..., nb, block)
    return y.flatten(-2)[..., :K].contiguous(), scale


def act_dequant(x_fp8: torch.Tensor, scale: torch.Tensor, block: int = 128,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`act_quant`: x_fp8 (..., K), scale (..., ceil(K / block)) -> x (..., K) in ``dtype``."""
    _check_block(block)
    K = x_fp8.size(-1)
    if scale.shape != (*x_fp8.shape[:-1], math.ceil(K / block)):
        raise ValueError(f"scale shape {tuple(scale.shape)} does not match x {tuple(x_fp8.shape)} "
                         f"with block {block}: expected {(*x_fp8.shape[:-1], math.ceil(K / block))}")
    s = scale.repeat_interleave(block, dim=-1)[..., :K]     # (..., K) each tile's scale, repeated
    return (x_fp8.float() * s).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# weights: block x block over the last two dims (any leading dims, e.g. experts (E, out, in))
# ---------------------------------------------------------------------------------------------------------
def weight_quant(w: torch.Tensor, block: int = 128, fmt: str = "e4m3", amax_eps: float = AMAX_EPS,
                 scale_fmt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize per ``block`` x ``block`` block of the last two dims (special values as in :func:`act_quant`).

    w (..., M, N) -> w_fp8 (..., M, N) float8, scale_inv (..., ceil(M / block), ceil(N / block)) float32,
    where scale_inv = amax / 448 per block (DeepSeek's ``weight_scale_inv``): dequant = w_fp8 * scale_inv.
    """
    _check_block(block)
    if w.dim() < 2 or w.size(-1) == 0 or w.size(-2) == 0:
        raise ValueError(f"weight_quant needs w of shape (..., M, N) with M, N > 0, got {tuple(w.shape)}")
    M, N = w.shape[-2:]
    mb, nb = math.ceil(M / block), math.ceil(N / block)
    wp = F.pad(w.float(), (0, nb * block - N, 0, mb * block - M))             # (..., mb*block, nb*block)
    blocks = wp.unflatten(-1, (nb, block)).unflatten(-3, (mb, block))         # (..., mb, block, nb, block)
    scale = amax_to_scale(group_amax(blocks, (-3, -1)), fmt, amax_eps, scale_fmt)   # (..., mb, nb)
    y = cast_to_fp8(blocks / scale[..., :, None, :, None], fmt)               # (..., mb, block, nb, block)
    y = y.flatten(-2).flatten(-3, -2)                                         # (..., mb*block, nb*block)
    return y[..., :M, :N].contiguous(), scale


def weight_dequant(w_fp8: torch.Tensor, scale_inv: torch.Tensor, block: int = 128,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`weight_quant`: w_fp8 (..., M, N) * scale_inv per block -> (..., M, N) in ``dtype``."""
    _check_block(block)
    M, N = w_fp8.shape[-2:]
    expected = (*w_fp8.shape[:-2], math.ceil(M / block), math.ceil(N / block))
    if scale_inv.shape != expected:
        raise ValueError(f"scale_inv shape {tuple(scale_inv.shape)} does not match w {tuple(w_fp8.shape)} "
                         f"with block {block}: expected {expected}")
    s = scale_inv.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)[..., :M, :N]
    return (w_fp8.float() * s).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# coarse baselines, for the "why fine-grained" comparison
# ---------------------------------------------------------------------------------------------------------
def per_tensor_quant(x: torch.Tensor, fmt: str = "e4m3", amax_eps: float = AMAX_EPS,
                     scale_fmt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor: x_fp8 (same shape), scale () float32. Dequant: x_fp8 * scale."""
    scale = amax_to_scale(group_amax(x.detach(), tuple(range(x.dim()))), fmt, amax_eps, scale_fmt)   # ()
    return cast_to_fp8(x.float() / scale, fmt), scale


def per_row_quant(x: torch.Tensor, fmt: str = "e4m3", amax_eps: float = AMAX_EPS,
                  scale_fmt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale per row (per token): x (..., K) -> x_fp8 (..., K), scale (..., 1) float32."""
    scale = amax_to_scale(group_amax(x.detach(), -1).unsqueeze(-1), fmt, amax_eps, scale_fmt)   # (..., 1)
    return cast_to_fp8(x.float() / scale, fmt), scale


def quant_dequant(x: torch.Tensor, method: str = "tile_1x128", fmt: str = "e4m3", block: int = 128,
                  amax_eps: float = AMAX_EPS, scale_fmt: str | None = None) -> torch.Tensor:
    """Round-trip x through FP8 with one of SCALINGS; returns float32 of x's shape (what a GEMM would see)."""
    kw = {"amax_eps": amax_eps, "scale_fmt": scale_fmt}
    if method == "per_tensor":
        q, s = per_tensor_quant(x, fmt, **kw)
        return q.float() * s
    if method == "per_row":
        q, s = per_row_quant(x, fmt, **kw)
        return q.float() * s
    if method == "tile_1x128":
        return act_dequant(*act_quant(x, block, fmt, **kw), block=block)
    if method == "block_128x128":
        return weight_dequant(*weight_quant(x, block, fmt, **kw), block=block)
    raise ValueError(f"unknown method {method!r}: use one of {SCALINGS}")


def quant_error(x: torch.Tensor, method: str = "tile_1x128", fmt: str = "e4m3", block: int = 128,
                metric: str = "fro", amax_eps: float = AMAX_EPS, scale_fmt: str | None = None) -> float:
    """Relative error of one quantization method.

    ``metric="fro"``: ||qdq(x) - x|| / ||x|| (Frobenius), dominated by the largest values.
    ``metric="mean"``: mean over nonzero elements of |qdq(x) - x| / |x|: every element counts the same, so it
    shows the small values that a coarse scale pushes into the subnormals or to zero.
    """
    x = x.detach().float()
    if not x.any():
        raise ValueError("quant_error of an all-zero tensor is undefined (||x|| = 0)")
    err = quant_dequant(x, method, fmt, block, amax_eps, scale_fmt) - x
    if metric == "fro":
        return (err.norm() / x.norm()).item()
    if metric == "mean":
        nz = x != 0
        return (err[nz].abs() / x[nz].abs()).mean().item()
    raise ValueError(f"unknown metric {metric!r}: use 'fro' or 'mean'")


# ---------------------------------------------------------------------------------------------------------
# the block-scaled GEMM, in torch: what fp8_gemm computes
# ---------------------------------------------------------------------------------------------------------
def block_scaled_matmul(a_fp8: torch.Tensor, a_s: torch.Tensor, b_fp8: torch.Tensor, b_s: torch.Tensor,
                        block: int = 128) -> torch.Tensor:
    """C = dequant(A) @ dequant(B)^T computed the way the FP8 GEMM kernel does, one K-block at a time.

    a_fp8 (..., K) with a_s (..., ceil(K/block)) from :func:`act_quant`;
    b_fp8 (N, K) (a weight: out x in) with b_s (ceil(N/block), ceil(K/block)) from :func:`weight_quant`.
    For each K-block i: C += (A_i @ B_i^T) * a_s[:, i] * b_s[n // block, i]. The FP8 x FP8 products are
    exact in float32; the per-block partial sum is scaled and added to a float32 accumulator (the "promotion
    to CUDA cores every 128 elements" of the report). Returns float32 (..., N).
    """
    _check_block(block)
    K = a_fp8.size(-1)
    N = b_fp8.size(0)
    nk = math.ceil(K / block)
    if b_fp8.shape != (N, K) or a_s.shape != (*a_fp8.shape[:-1], nk) or b_s.shape != (math.ceil(N / block), nk):
        raise ValueError(f"shapes do not match: a {tuple(a_fp8.shape)}, a_s {tuple(a_s.shape)}, "
                         f"b {tuple(b_fp8.shape)} (want (N, K)), b_s {tuple(b_s.shape)}")
    a = a_fp8.reshape(-1, K).float()                         # (M, K)
    sa = a_s.reshape(-1, nk)                                 # (M, nk)
    b = b_fp8.float()                                        # (N, K)
    sb = b_s.repeat_interleave(block, dim=0)[:N]             # (N, nk) each output column's block scale
    out = torch.zeros(a.size(0), N, device=a.device)         # (M, N) float32 accumulator
    for i in range(nk):
        ks = slice(i * block, (i + 1) * block)
        out += (a[:, ks] @ b[:, ks].T) * sa[:, i:i + 1] * sb[:, i]
    return out.reshape(*a_fp8.shape[:-1], N)
