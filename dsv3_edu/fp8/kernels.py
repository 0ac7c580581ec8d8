"""Triton kernels for DeepSeek-V3's FP8 recipe, after DeepSeek's reference ``inference/kernel.py``.

* ``act_quant_triton``      x (..., K) -> FP8 + one scale per 1x128 tile (scale = amax / 448)
* ``weight_dequant_triton`` w_fp8 (M, N) * weight_scale_inv per 128x128 block -> bf16/fp32 weight
* ``fp8_gemm_triton``       C = A @ B^T with A scaled per 1x128 tile and B per 128x128 block: each 128-wide
                            K-block is multiplied on the tensor cores, then scaled and added to an FP32
                            accumulator (this is the report's "promote to CUDA cores every N_C = 128").

They run compiled on a CUDA GPU and, on a machine without one, under Triton's CPU interpreter
(``TRITON_INTERPRET=1``). Triton reads that variable each time ``@triton.jit`` decorates a function, and
triton's own helpers (``tl.max``, ``tl.cdiv``, ...) are decorated when triton is imported: so the variable must
be set *before triton is imported*. Importing this module does it (:func:`use_triton_interpreter`, before its
``import triton``) when no GPU is present, and raises a clear error if triton was imported too early. The torch
functions in ``quant.py`` are the reference: the tests check these kernels against them bit-for-bit.

THE INTERPRETER TRAP (triton 3.9), and the fix used here
--------------------------------------------------------
On the interpreter, ``y.to(tl.float8e4nv)`` (float32 -> float8_e4m3fn) is emulated in numpy by bit surgery that
rounds wrongly: 31.2 -> 16 (should be 32), 7.8 -> 4 (8), 500 -> 256 (448), 17 -> 18 (16, ties-to-even),
0.001 -> 0 (0.00195, the smallest subnormal). Two bugs: (1) when rounding the mantissa up overflows it (1.111b
+ 1 ulp = 10.000b) the carry is dropped instead of bumping the exponent, so the value falls to the *bottom* of
its binade; (2) ties round up, not to even, and out-of-range values and subnormals are truncated, not rounded.
E5M2 has the same bug. A kernel that "looks right" can therefore quantize 31.2 to 16 on CPU and 32 on a GPU.

The fix: round in float32 arithmetic first, in the kernel, onto the FP8 grid (:func:`round_to_fp8_grid`),
so the value handed to the cast is already exactly representable; the cast then has nothing left to round
and is exact on both the interpreter and the GPU (whose hardware cast ``cvt.rn.satfinite`` would have rounded
correctly by itself; the extra float ops are free in these memory-bound kernels). One code path runs
everywhere, so the CPU tests test the GPU code. (The other fix would be to store the scaled float32 values
and cast in torch; that splits the kernel in two and would leave the interpreter and the GPU running different
code.) :func:`fp8_cast_triton` shows the trap and the fix side by side. The widening direction FP8 -> float32
is exact on the interpreter for every finite value (the tests check all 256 bytes); only the NaN/inf bytes
decode wrongly there (e.g. E4M3 NaN -> 480), and a NaN input quantizes to the NaN byte. So the kernels handle
special values themselves (see :func:`dsv3_edu.fp8.quant.act_quant` for the behaviour, the reference kernel's on
a GPU): ``act_quant_kernel`` ignores NaN in the amax and writes the NaN byte 0x7F itself (the interpreter's cast
of a NaN depends on its payload), ``weight_dequant_kernel`` decodes NaN / inf bytes (:func:`decode_fp8_specials`),
and ``fp8_gemm_kernel`` marks rows and columns holding a NaN byte (``NAN_FIX``, interpreter only).

Two smaller things for bit-exactness: divisions use ``tl.math.div_rn`` (IEEE round-to-nearest, like torch;
Triton's ``/`` on a GPU may use a faster approximate division), and ``tl.dot`` on FP8 needs an sm_89+ GPU
(Ada, Hopper) when compiled.
"""
from __future__ import annotations

import math
import os
import sys

import torch


def use_triton_interpreter() -> bool:
    """Set ``TRITON_INTERPRET=1`` when no CUDA GPU is present (an explicit setting is left alone).

    Returns True when kernels will run on the CPU interpreter. Must run before triton is imported; this module
    calls it on import, before its own ``import triton``.
    """
    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        if "triton" in sys.modules:
            raise RuntimeError(
                "triton was imported before TRITON_INTERPRET=1 was set, and there is no GPU: its built-in "
                "functions (tl.max, ...) are compiled-mode only, so the kernels cannot run on the CPU "
                "interpreter. Set os.environ['TRITON_INTERPRET'] = '1' (or import dsv3_edu.fp8.kernels) "
                "before anything imports triton.")
        os.environ["TRITON_INTERPRET"] = "1"
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


INTERPRET = use_triton_interpreter()

import triton  # noqa: E402  (after use_triton_interpreter, on purpose)
import triton.language as tl  # noqa: E402

from .formats import format_info  # noqa: E402
from .quant import AMAX_EPS, check_scale_args  # noqa: E402


def _fmt_constants(fmt: str) -> dict:
    """The compile-time constants of an FP8 format for round_to_fp8_grid."""
    info = format_info(fmt)
    return dict(MANT_BITS=info["mantissa_bits"], MIN_EXP=1 - info["bias"], MAX_VAL=info["max_normal"])


@triton.jit
def round_to_fp8_grid(y, MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr, MAX_VAL: tl.constexpr):
    """Round float32 ``y`` to the nearest FP8 value (ties to even, saturating at +-MAX_VAL); result in float32.

    In the binade [2^e, 2^(e+1)) FP8 values are spaced ulp = 2^(e - MANT_BITS); below the smallest normal
    2^MIN_EXP the spacing stays 2^(MIN_EXP - MANT_BITS) (subnormals). Dividing by ulp (exact: a power of two)
    gives r in [0, 2^(MANT_BITS+1)]; adding and subtracting 2^23 makes the float32 adder round r to an integer
    with ties to even (2^23 is where float32 has no fraction bits left). A carry (r -> 2^(MANT_BITS+1)) lands
    correctly in the next binade, which is exactly what the interpreter's cast gets wrong.
    """
    a = tl.minimum(tl.abs(y), MAX_VAL)
    e = ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127                  # floor(log2 a): the exponent field
    e = tl.maximum(e, MIN_EXP)                                                # subnormals: fixed spacing
    inv_ulp = ((MANT_BITS - e + 127) << 23).to(tl.float32, bitcast=True)      # 2^(MANT_BITS - e)
    ulp = ((e - MANT_BITS + 127) << 23).to(tl.float32, bitcast=True)          # 2^(e - MANT_BITS)
    r = a * inv_ulp                                                           # exact
    r = (r + 8388608.0) - 8388608.0                                           # round to integer, ties to even
    q = r * ulp                                                               # exact: back on the FP8 grid
    sign = (y.to(tl.int32, bitcast=True) >> 31) << 31                         # y's sign bit (keeps -0.0)
    q = (q.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)
    return tl.where(y != y, y, q)        # NaN stays NaN (a GPU's min() would have turned it into MAX_VAL)


@triton.jit
def fp8_cast_kernel(x_ptr, y_ptr, n, EXACT: tl.constexpr, BLOCK: tl.constexpr,
                    MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr, MAX_VAL: tl.constexpr):
    """Elementwise float32 -> FP8, with (EXACT) or without the pre-rounding fix."""
    offs = tl.program_id(axis=0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if EXACT:
        y = round_to_fp8_grid(y, MANT_BITS, MIN_EXP, MAX_VAL)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def fp8_cast_triton(x: torch.Tensor, fmt: str = "e4m3", exact: bool = True) -> torch.Tensor:
    """Cast float32 values to FP8 inside a Triton kernel, no scaling: the interpreter trap in isolation.

    ``exact=False`` is the plain ``y.to(fp8)`` cast: on the triton 3.9 interpreter 31.2 -> 16, 7.8 -> 4.
    ``exact=True`` rounds onto the FP8 grid first (:func:`round_to_fp8_grid`) and matches torch's
    ``x.clamp(-max, max).to(fp8)`` bit for bit, on the interpreter and on a GPU.
    """
    x = x.contiguous().float()
    y = torch.empty(x.shape, dtype=format_info(fmt)["dtype"], device=x.device)
    n, BLOCK = x.numel(), 1024
    fp8_cast_kernel[(triton.cdiv(n, BLOCK),)](x, y, n, EXACT=exact, BLOCK=BLOCK, **_fmt_constants(fmt))
    return y


@triton.jit
def act_quant_kernel(x_ptr, y_ptr, s_ptr, K, n_blocks, BLOCK: tl.constexpr, AMAX_EPS: tl.constexpr,
                     UE8M0: tl.constexpr, MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr, MAX_VAL: tl.constexpr):
    """One program = one 1 x BLOCK tile: row ``pid 0``, K-block ``pid 1``; the tail of a row is masked."""
    row = tl.program_id(axis=0)
    kb = tl.program_id(axis=1)
    offs = kb * BLOCK + tl.arange(0, BLOCK)                                  # (BLOCK,)
    mask = offs < K
    x = tl.load(x_ptr + row * K + offs, mask=mask, other=0.0).to(tl.float32)
    # NaN ignored by the amax, explicitly: a GPU's max() skips NaN, the interpreter's numpy max() would not
    amax = tl.max(tl.where(x != x, 0.0, tl.abs(x)))
    amax = tl.maximum(amax, AMAX_EPS)                                         # the reference's 1e-4 floor
    s = tl.math.div_rn(amax, MAX_VAL)                                         # scale = amax / 448
    if UE8M0:                                                                 # round up to a power of two
        s = ((s.to(tl.int32, bitcast=True) + 0x7FFFFF) & -0x800000).to(tl.float32, bitcast=True)
    y = round_to_fp8_grid(tl.math.div_rn(x, s), MANT_BITS, MIN_EXP, MAX_VAL)
    tl.store(y_ptr + row * K + offs, y.to(y_ptr.dtype.element_ty), mask=mask)  # exact cast: y is on the grid
    # NaN: write the canonical NaN byte 0x7F (E4M3 S.1111.111, E5M2 S.11111.11) ourselves. A GPU's cast gives
    # 0x7F too, but the interpreter's cast depends on the NaN's payload (0/0 -> 0x7C = 240 in E4M3).
    y_bytes = y_ptr.to(tl.pointer_type(tl.uint8))
    tl.store(y_bytes + row * K + offs, tl.full((BLOCK,), 0x7F, tl.uint8), mask=mask & (y != y))
    tl.store(s_ptr + row * n_blocks + kb, s)


def act_quant_triton(x: torch.Tensor, block: int = 128, fmt: str = "e4m3", amax_eps: float = AMAX_EPS,
                     scale_fmt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`dsv3_edu.fp8.quant.act_quant` (same amax floor, scale format and special values).

    x (..., K) -> x_fp8 (..., K), scale (..., ceil(K / block)) float32; K need not be a multiple of ``block``.
    """
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block must be a power of two (tl.arange needs one), got {block}")
    if x.dim() == 0 or x.size(-1) == 0:
        raise ValueError(f"act_quant_triton needs x of shape (..., K) with K > 0, got {tuple(x.shape)}")
    check_scale_args(fmt, amax_eps, scale_fmt)
    x = x.contiguous()
    K = x.size(-1)
    M = x.numel() // K
    nb = math.ceil(K / block)
    y = torch.empty(x.shape, dtype=format_info(fmt)["dtype"], device=x.device)
    s = torch.empty(*x.shape[:-1], nb, dtype=torch.float32, device=x.device)
    act_quant_kernel[(M, nb)](x, y, s, K, nb, BLOCK=block, AMAX_EPS=float(amax_eps),
                              UE8M0=scale_fmt == "ue8m0", **_fmt_constants(fmt))
    return y, s


@triton.jit
def decode_fp8_specials(x, x_bytes, E5M2: tl.constexpr):
    """``x``: FP8 values already widened to float32; ``x_bytes``: the same values' bytes (uint8). Returns x with
    NaN (and E5M2's +-inf) bytes decoded as such: the interpreter widens them wrongly (E4M3 NaN -> 480), a GPU
    rightly, so this is a no-op there."""
    low = x_bytes & 0x7F                                                      # the byte without its sign bit
    if E5M2:
        x = tl.where(low == 0x7C, tl.where(x_bytes > 0x7F, -float("inf"), float("inf")), x)
        x = tl.where(low > 0x7C, float("nan"), x)
    else:
        x = tl.where(low == 0x7F, float("nan"), x)
    return x


@triton.jit
def weight_dequant_kernel(x_ptr, s_ptr, y_ptr, M, N, BLOCK: tl.constexpr, E5M2: tl.constexpr):
    """One program = one BLOCK x BLOCK block: y = x_fp8 * scale_inv[block]; edges masked."""
    pid_m = tl.program_id(axis=0)
    pid_n = tl.program_id(axis=1)
    n_blocks = tl.cdiv(N, BLOCK)
    offs_m = pid_m * BLOCK + tl.arange(0, BLOCK)
    offs_n = pid_n * BLOCK + tl.arange(0, BLOCK)
    offs = offs_m[:, None] * N + offs_n[None, :]                              # (BLOCK, BLOCK)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    x = decode_fp8_specials(x, tl.load(x_ptr.to(tl.pointer_type(tl.uint8)) + offs, mask=mask), E5M2)
    s = tl.load(s_ptr + pid_m * n_blocks + pid_n)
    tl.store(y_ptr + offs, (x * s).to(y_ptr.dtype.element_ty), mask=mask)


def weight_dequant_triton(w_fp8: torch.Tensor, scale_inv: torch.Tensor, block: int = 128,
                          out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Triton twin of :func:`dsv3_edu.fp8.quant.weight_dequant` for a 2-D weight (M, N).

    scale_inv (ceil(M/block), ceil(N/block)) float32. ``out_dtype`` defaults to torch's default dtype, as in the
    reference code (which sets bf16 as default).
    """
    if w_fp8.dim() != 2:
        raise ValueError(f"weight_dequant_triton needs a 2-D weight (M, N), got shape {tuple(w_fp8.shape)}")
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    M, N = w_fp8.shape
    if scale_inv.shape != (math.ceil(M / block), math.ceil(N / block)):
        raise ValueError(f"scale_inv shape {tuple(scale_inv.shape)} does not match weight {(M, N)} "
                         f"with block {block}")
    w_fp8, scale_inv = w_fp8.contiguous(), scale_inv.contiguous()
    y = torch.empty(M, N, dtype=out_dtype or torch.get_default_dtype(), device=w_fp8.device)
    grid = (math.ceil(M / block), math.ceil(N / block))
    weight_dequant_kernel[grid](w_fp8, scale_inv, y, M, N, BLOCK=block, E5M2=w_fp8.dtype == torch.float8_e5m2)
    return y


@triton.jit
def fp8_gemm_kernel(a_ptr, b_ptr, c_ptr, a_s_ptr, b_s_ptr, M, N, K,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    NAN_FIX: tl.constexpr = False, NAN_LOW: tl.constexpr = 0x7F):
    """C (M, N) = A (M, K) @ B (N, K)^T, A scaled per 1 x BLOCK_K tile, B per BLOCK_K x BLOCK_K block.

    a_s (M, k) and b_s (ceil(N / BLOCK_K), k) with k = ceil(K / BLOCK_K). Each K-step: an FP8 x FP8 tensor-core
    product with a fresh accumulator, then ``* a_s[m] * b_s[n // BLOCK_K]`` and += into the FP32 accumulator.
    NAN_FIX (the interpreter only, whose tl.dot widens an FP8 NaN to a finite number): a row of A or a column of
    B holding a NaN byte (sign-less byte >= NAN_LOW) makes its outputs NaN, as the tensor cores do.
    """
    pid_m = tl.program_id(axis=0)
    pid_n = tl.program_id(axis=1)
    k = tl.cdiv(K, BLOCK_K)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                          # (BLOCK_M,)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                          # (BLOCK_N,)
    offs_k = tl.arange(0, BLOCK_K)                                            # (BLOCK_K,)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * K + offs_k[None, :]                    # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + offs_n[None, :] * K + offs_k[:, None]                    # (BLOCK_K, BLOCK_N): B^T tile
    a_s_ptrs = a_s_ptr + offs_m * k                                           # row scales, K-block 0
    b_s_ptrs = b_s_ptr + (offs_n // BLOCK_K) * k                              # column block scales, K-block 0

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a_nan = tl.zeros((BLOCK_M,), dtype=tl.int32)
    b_nan = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for i in range(k):
        k_left = K - i * BLOCK_K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=mask_n[None, :] & (offs_k[:, None] < k_left), other=0.0)
        a_s = tl.load(a_s_ptrs, mask=mask_m, other=0.0)
        b_s = tl.load(b_s_ptrs, mask=mask_n, other=0.0)
        acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]                     # promote + dequant per K-block
        if NAN_FIX:
            a_low = tl.load(a_ptrs.to(tl.pointer_type(tl.uint8)), mask=mask_m[:, None] & (offs_k[None, :] < k_left),
                            other=0) & 0x7F
            b_low = tl.load(b_ptrs.to(tl.pointer_type(tl.uint8)), mask=mask_n[None, :] & (offs_k[:, None] < k_left),
                            other=0) & 0x7F
            a_nan = tl.maximum(a_nan, tl.max((a_low >= NAN_LOW).to(tl.int32), axis=1))
            b_nan = tl.maximum(b_nan, tl.max((b_low >= NAN_LOW).to(tl.int32), axis=0))
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
        a_s_ptrs += 1
        b_s_ptrs += 1
    if NAN_FIX:
        acc = tl.where((a_nan[:, None] > 0) | (b_nan[None, :] > 0), float("nan"), acc)
    c_ptrs = c_ptr + offs_m[:, None] * N + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# GPU: let Triton pick tile sizes per (N, K). The interpreter uses one fixed config (autotuning would rerun
# every config in numpy, and timings mean nothing there). BLOCK_K stays 128: it must equal the scale block.
_GEMM_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 128}, num_stages=ns, num_warps=nw)
                 for bm in (64, 128) for bn in (64, 128) for ns in (3, 4) for nw in (4, 8)]
_fp8_gemm_tuned = triton.autotune(configs=_GEMM_CONFIGS, key=["N", "K"])(fp8_gemm_kernel)


def fp8_gemm_triton(a: torch.Tensor, a_s: torch.Tensor, b: torch.Tensor, b_s: torch.Tensor,
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Block-scaled FP8 GEMM: a (..., K) fp8 with a_s (..., ceil(K/128)), b (N, K) fp8 (a weight, out x in)
    with b_s (ceil(N/128), ceil(K/128)) -> (..., N) in ``out_dtype`` (default: torch's default dtype).

    Same math as :func:`dsv3_edu.fp8.quant.block_scaled_matmul`.
    """
    block = 128
    if a.dtype != b.dtype or a.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise ValueError(f"a and b must share an FP8 dtype, got {a.dtype} and {b.dtype}")
    K = a.size(-1)
    N = b.size(0)
    k = math.ceil(K / block)
    if b.dim() != 2 or b.size(1) != K:
        raise ValueError(f"b must be (N, K) with K = {K}, got {tuple(b.shape)}")
    if a_s.shape != (*a.shape[:-1], k) or b_s.shape != (math.ceil(N / block), k):
        raise ValueError(f"scale shapes a_s {tuple(a_s.shape)}, b_s {tuple(b_s.shape)} do not match "
                         f"a {tuple(a.shape)} and b {tuple(b.shape)} with 128-blocks")
    a, a_s, b, b_s = a.contiguous(), a_s.contiguous().float(), b.contiguous(), b_s.contiguous().float()
    M = a.numel() // K
    c = torch.empty(*a.shape[:-1], N, dtype=out_dtype or torch.get_default_dtype(), device=a.device)
    if INTERPRET:
        BM, BN = 64, 64
        fp8_gemm_kernel[(triton.cdiv(M, BM), triton.cdiv(N, BN))](
            a, b, c, a_s, b_s, M, N, K, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=block,
            NAN_FIX=True, NAN_LOW=0x7F if a.dtype == torch.float8_e4m3fn else 0x7D)
    else:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))  # noqa: E731
        _fp8_gemm_tuned[grid](a, b, c, a_s, b_s, M, N, K)
    return c
