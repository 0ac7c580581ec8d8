"""Why DeepSeek-V3 promotes FP8 GEMM partial sums to FP32 every N_C = 128 elements: a simulation.

The report (section 3.3.2): on H800 the FP8 tensor cores accumulate with only ~14 bits, which gives up to ~2%
relative error for K = 4096; the fix is to copy the tensor cores' partial sum into an FP32 register on the
CUDA cores every N_C = 128 elements of K (4 MMA instructions of K = 32), and restart the tensor-core sum.

How a limited accumulator loses bits (the model simulated here, ``mode="aligned"``): one MMA step adds 32
products and the running sum at once. The adder aligns every addend to the largest exponent among them and
keeps ``acc_bits`` significant bits of that largest one; lower bits of the smaller addends are *truncated*.
Late in a long K loop the running sum is much larger than each new product, so every product loses its low
bits, always toward zero: the error is biased and grows with K instead of averaging out. Promotion bounds the
running sum to 128 products, so the tensor cores never see a large accumulator.

``mode="round_sum"`` is the naive model (round the running sum to ``acc_bits`` bits, to nearest, after each
MMA step). It is unbiased and stays far below 1% at K = 4096: the 2% of the report needs the truncation of
aligned addends. Both are models, not the hardware. Measured with ``accumulation_error_curve`` (32x32
outputs, acc_bits=14, mma_k=32, seed 0; see docs/fp8.md): the aligned model gives a max relative error of
3.3% at K = 4096 with the default N(1, 1) data (0.75% at K = 1024, 6.9% at K = 8192: linear in K), 7.4% with
all-positive data; promotion every 128 brings it to ~2e-4 at every K. The naive round_sum model gives 0.05%.
The report's "~2%" sits in the range of the aligned model; the exact figure depends on the data.
"""
from __future__ import annotations

import torch

MODES = ("aligned", "round_sum")


def round_to_bits(x: torch.Tensor, bits: int, truncate: bool = False) -> torch.Tensor:
    """Keep ``bits`` significant bits of each float (to nearest-even, or toward zero if ``truncate``)."""
    m, e = torch.frexp(x)                                   # x = m * 2^e, 0.5 <= |m| < 1
    m = m * 2.0 ** bits
    m = torch.trunc(m) if truncate else torch.round(m)      # torch.round: ties to even
    return torch.ldexp(m / 2.0 ** bits, e)


def aligned_sum(terms: torch.Tensor, bits: int) -> torch.Tensor:
    """Sum over the last dim the way a narrow adder does: align to the largest |term|, keep ``bits`` bits of it.

    terms (..., n) float64 -> (...,). Every term is truncated (toward zero) to a multiple of the largest term's
    last kept bit, then the truncated terms are summed exactly.
    """
    _, e = torch.frexp(terms.abs().amax(-1, keepdim=True))  # largest term in [2^(e-1), 2^e)
    ulp = torch.ldexp(torch.ones_like(terms[..., :1]), e - bits)   # its last kept bit: 2^(e - bits)
    return (torch.trunc(terms / ulp) * ulp).sum(-1)


def limited_matmul(a: torch.Tensor, b: torch.Tensor, acc_bits: int = 14, mma_k: int = 32,
                   promote_every: int | None = None, mode: str = "aligned") -> torch.Tensor:
    """C = a @ b with a tensor-core accumulator that keeps ``acc_bits`` bits, K consumed ``mma_k`` at a time.

    a (M, K), b (K, N) (FP8 values, any float dtype) -> C (M, N) float64. With ``promote_every`` (a multiple of
    ``mma_k``; the report uses 128) the limited partial sum is added to an FP32 accumulator every that many
    elements of K and restarted from zero.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
    if promote_every is not None and (promote_every <= 0 or promote_every % mma_k):
        raise ValueError(f"promote_every must be a positive multiple of mma_k={mma_k}, got {promote_every}")
    if a.dim() != 2 or b.dim() != 2 or a.size(1) != b.size(0):
        raise ValueError(f"need a (M, K) and b (K, N), got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    M, K = a.shape
    acc = torch.zeros(M, b.size(1), dtype=torch.float64, device=a.device)   # the tensor cores' partial sum
    fp32 = torch.zeros(M, b.size(1), dtype=torch.float32, device=a.device)   # the CUDA cores' FP32 accumulator
    for k0 in range(0, K, mma_k):
        ak, bk = a[:, k0:k0 + mma_k], b[k0:k0 + mma_k]              # (M, mma_k), (mma_k, N)
        if mode == "aligned":
            products = ak[:, None, :] * bk.T[None, :, :]            # (M, N, mma_k), exact in float64
            acc = aligned_sum(torch.cat([products, acc[..., None]], dim=-1), acc_bits)
        else:
            acc = round_to_bits(acc + ak @ bk, acc_bits)
        acc = acc.float().double()                                  # the accumulator register is FP32
        if promote_every is not None and (k0 + mma_k) % promote_every == 0:
            fp32 += acc.float()
            acc = torch.zeros_like(acc)
    return (fp32 + acc.float()).double() if promote_every is not None else acc


DATA = ("shifted", "positive", "normal")


def make_fp8_operands(M: int, K: int, N: int, seed: int = 0, data: str = "shifted"):
    """Random GEMM inputs already on the E4M3 grid, so only accumulation error is measured.

    ``"shifted"``: N(1, 1) entries (mostly positive: sums grow like K, outputs stay far from 0 so relative error
    per output means something); ``"positive"``: |N(0, 1)| (all positive: no truncation errors cancel, the worst
    case); ``"normal"``: N(0, 1) (sums grow like sqrt(K); some outputs are near 0 and their relative error is
    large whatever the accumulator).
    """
    if data not in DATA:
        raise ValueError(f"data must be one of {DATA}, got {data!r}")
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(M, K, generator=g)
    b = torch.randn(K, N, generator=g)
    if data == "shifted":
        a, b = a + 1, b + 1
    elif data == "positive":
        a, b = a.abs(), b.abs()
    return a.to(torch.float8_e4m3fn).float(), b.to(torch.float8_e4m3fn).float()


def _rel_err(c: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    return (c.double() - exact).abs() / exact.abs().clamp(min=1e-30)


def accumulation_error_curve(Ks, promote_every: int | None = None, seed: int = 0, acc_bits: int = 14,
                             mma_k: int = 32, M: int = 32, N: int = 32, data: str = "shifted",
                             mode: str = "aligned") -> dict:
    """Relative error of the limited accumulator vs an exact (float64) GEMM of the same FP8 inputs, per K.

    Returns {"K": [...], "max_rel_err": [...], "mean_rel_err": [...], "fp32_max_rel_err": [...]} where the
    errors are |C - C_exact| / |C_exact| over the M x N outputs, and fp32_max_rel_err is a plain float32
    matmul's (the floor). Plot max_rel_err against K with and without ``promote_every=128``.
    """
    out = {"K": [], "max_rel_err": [], "mean_rel_err": [], "fp32_max_rel_err": []}
    for i, K in enumerate(Ks):
        if K <= 0 or K % mma_k:
            raise ValueError(f"each K must be a positive multiple of mma_k={mma_k}, got {K}")
        a, b = make_fp8_operands(M, K, N, seed + i, data)
        exact = a.double() @ b.double()                                        # (M, N)
        err = _rel_err(limited_matmul(a, b, acc_bits, mma_k, promote_every, mode), exact)
        out["K"].append(int(K))
        out["max_rel_err"].append(err.max().item())
        out["mean_rel_err"].append(err.mean().item())
        out["fp32_max_rel_err"].append(_rel_err(a @ b, exact).max().item())
    return out
