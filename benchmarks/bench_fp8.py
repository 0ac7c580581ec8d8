"""Benchmark the FP8 kernels of dsv3_edu.fp8.

On a CUDA GPU: throughput (TFLOP/s) of the block-scaled ``fp8_gemm_triton`` (A per 1x128 tile, B per 128x128
block, as DeepSeek-V3) against torch's bf16 matmul and torch's FP8 GEMMs (``torch._scaled_mm`` with one scale
per tensor, and ``F.scaled_mm`` with DeepSeek-style 1x128 / 128x128 block scales where the GPU and CUDA
support it: sm_90 and CUDA >= 12.9). FP8 needs an sm_89+ GPU (Ada, Hopper, Blackwell).
On a CPU: runs the kernels on Triton's interpreter at a tiny shape, checks them against the torch reference
and prints no timings (interpreter timings measure numpy, not a GPU).

    python benchmarks/bench_fp8.py                      # default shapes
    python benchmarks/bench_fp8.py --shapes 4096x7168x2048 8192x8192x8192   # M x N x K
    DSV3_FAST=1 python benchmarks/bench_fp8.py          # one small shape
"""
from __future__ import annotations

import argparse
import os
import platform

import torch

from dsv3_edu.check import bench_cuda as cuda_seconds  # imports no triton
from dsv3_edu.fp8 import (
    act_quant,
    block_scaled_matmul,
    kernels,  # sets TRITON_INTERPRET=1 when no GPU; must come before any triton import
    weight_dequant,
    weight_quant,
)
from dsv3_edu.runtime import pick

# (M, N, K): tokens x out x in. DeepSeek-V3-like: expert up-projection (d=7168 -> 2048), down-projection,
# the dense FFN's up-projection, and a square reference.
DEFAULT_SHAPES = [(4096, 4096, 4096), (4096, 2048, 7168), (4096, 7168, 2048), (4096, 18432, 7168)]


def machine_info() -> str:
    lines = [f"python {platform.python_version()}, torch {torch.__version__}, triton {_triton_version()}",
             f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"gpu: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
                     f"{p.multi_processor_count} SMs, CUDA {torch.version.cuda}")
    else:
        lines.append("gpu: none (Triton kernels run on the CPU interpreter)")
    lines.append(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    return "\n".join(lines)


def _triton_version() -> str:
    import triton
    return triton.__version__


def make_operands(M: int, N: int, K: int, device, seed: int = 0):
    """Activations (M, K) and a weight (N, K), bf16, and their DeepSeek-style FP8 quantization."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(M, K, device=device, generator=g).bfloat16()
    w = (torch.randn(N, K, device=device, generator=g) * 0.02).bfloat16()
    xq, xs = act_quant(x)          # (M, K) fp8, (M, K/128)
    wq, ws = weight_quant(w)       # (N, K) fp8, (N/128, K/128)
    return x, w, xq, xs, wq, ws


# ---------------------------------------------------------------------------------------------------------- CPU
def cpu_check(M: int = 128, N: int = 128, K: int = 256) -> None:
    """Run the interpreter kernels on a tiny shape and compare them with the torch reference."""
    print(f"\nCPU: Triton interpreter correctness check at M x N x K = {M} x {N} x {K}")
    x, w, xq, xs, wq, ws = make_operands(M, N, K, "cpu")
    q, s = kernels.act_quant_triton(x)
    same = torch.equal(q.view(torch.uint8), xq.view(torch.uint8)) and torch.equal(s, xs)
    print(f"  act_quant_triton      == act_quant (bit for bit):        {same}")
    wd = kernels.weight_dequant_triton(wq, ws, out_dtype=torch.float32)
    print(f"  weight_dequant_triton == weight_dequant:                 {torch.equal(wd, weight_dequant(wq, ws))}")
    c = kernels.fp8_gemm_triton(xq, xs, wq, ws, out_dtype=torch.float32)
    ref = block_scaled_matmul(xq, xs, wq, ws)
    rel = ((c - ref).norm() / ref.norm()).item()
    exact = x.float() @ w.float().T
    print(f"  fp8_gemm_triton vs block_scaled_matmul: rel err {rel:.1e}; vs the bf16 product: "
          f"{((c - exact).norm() / exact.norm()).item():.2%} (FP8 rounding of the inputs)")
    trap = kernels.fp8_cast_triton(torch.tensor([31.2, 7.8]), exact=False).float().tolist()
    print(f"  interpreter trap: plain in-kernel cast of [31.2, 7.8] -> {trap} (torch: [32.0, 8.0]); "
          f"the kernels pre-round and are exact")
    print("  NOTE: no timings on CPU: the interpreter runs the kernels in numpy, one program at a time; its "
          "speed says nothing about the GPU kernels.")


# ---------------------------------------------------------------------------------------------------------- GPU
def blockwise_scaled_mm(xq, xs, wq, ws):
    """torch's cuBLAS GEMM with DeepSeek's scaling (F.scaled_mm, BlockWise1x128 x BlockWise128x128).

    Layouts as torch's own tests use them: A's scales (M, K/128) outer-dim-major (stride (1, M)); B = w^T
    column-major; B's scales (N/128, K/128) padded on K/128 to a multiple of 4 and transposed. Scales are the
    dequantization multipliers (amax / 448), like ours.
    """
    import torch.nn.functional as F
    kb = ws.size(1)
    L4 = (kb + 3) // 4 * 4
    a_scale = xs.t().contiguous().t()
    b_scale = F.pad(ws, (0, L4 - kb)).t()
    return F.scaled_mm(xq, wq.t(), a_scale, F.ScalingType.BlockWise1x128, b_scale,
                       F.ScalingType.BlockWise128x128, output_dtype=torch.bfloat16)


def bench_shape(M: int, N: int, K: int, has_fp8: bool) -> str:
    """One table row: TFLOP/s of each GEMM at M x N x K, and the Triton kernel's error vs the torch reference."""
    x, w, xq, xs, wq, ws = make_operands(M, N, K, "cuda")
    flops = 2 * M * N * K

    def tflops(ms: float) -> float:
        return flops / ms / 1e9

    row = [f"{M}x{N}x{K}".rjust(20), f"{tflops(1e3 * cuda_seconds(lambda: x @ w.T)):11.0f}"]
    if not has_fp8:
        return " | ".join(row + ["-".rjust(15), "-".rjust(17), "-".rjust(23), "-"])
    c = kernels.fp8_gemm_triton(xq, xs, wq, ws, out_dtype=torch.bfloat16)       # also autotunes, once per (N, K)
    ref = block_scaled_matmul(xq, xs, wq, ws)
    err = f"{((c.float() - ref).norm() / ref.norm()).item():.1e}"
    row.append(f"{tflops(1e3 * cuda_seconds(lambda: kernels.fp8_gemm_triton(xq, xs, wq, ws, torch.bfloat16))):15.0f}")
    one = torch.ones((), device="cuda")
    wt = wq.t()                                                                 # (K, N) column-major
    row.append(_try(lambda: torch._scaled_mm(xq, wt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
                    tflops, 17))
    row.append(_try(lambda: blockwise_scaled_mm(xq, xs, wq, ws), tflops, 23))
    return " | ".join(row + [err])


def bench_cuda(shapes) -> None:
    cap = torch.cuda.get_device_capability()
    has_fp8 = cap >= (8, 9)
    print("\nCUDA: TFLOP/s (2*M*N*K / median time); FP8 inputs pre-quantized (quantization not timed)")
    if not has_fp8:
        print(f"  sm_{cap[0]}{cap[1]} has no FP8 tensor cores: only the bf16 baseline runs")
    header = f"{'M x N x K':>20} | {'bf16 matmul':>11} | {'fp8_gemm_triton':>15} | {'_scaled_mm tensor':>17} | " \
             f"{'scaled_mm 1x128/128x128':>23} | triton rel err"
    print(header)
    print("-" * len(header))
    for M, N, K in shapes:
        print(bench_shape(M, N, K, has_fp8))
        torch.cuda.empty_cache()
    print("\n_scaled_mm tensor = one scale per tensor (coarser than DeepSeek's recipe). 'n/a' = not supported "
          "by this GPU / torch / CUDA (the error is printed above the row).")


def _try(fn, tflops, width: int) -> str:
    try:
        fn()
        return f"{tflops(1e3 * cuda_seconds(fn)):{width}.0f}"
    except Exception as e:  # noqa: BLE001  (any failure of an optional baseline is reported, not fatal)
        print(f"  ({type(e).__name__}: {str(e).splitlines()[0][:150]})")
        return "n/a".rjust(width)


def parse_shape(s: str) -> tuple[int, int, int]:
    try:
        M, N, K = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be MxNxK (e.g. 4096x4096x4096), got {s!r}") from None
    return M, N, K


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", type=parse_shape, default=None, help="M x N x K, e.g. 4096x4096x4096")
    args = ap.parse_args()
    print(machine_info())
    if kernels.INTERPRET or not torch.cuda.is_available():
        cpu_check()
    else:
        bench_cuda(args.shapes or pick(DEFAULT_SHAPES, [(1024, 1024, 1024)]))


if __name__ == "__main__":
    main()
