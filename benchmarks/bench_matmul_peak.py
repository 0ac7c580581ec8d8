"""This machine's matmul peak in fp32 and bf16: the denominator of the trainer's MFU.

Times square GEMMs (1024^2 and 2048^2 on a CPU, 4096^2 and 8192^2 on a GPU) with the thread count torch
uses, best of repeated runs, and says whether the CPU has native bf16 (AVX512-BF16 / AMX), which decides
``--dtype auto``. The trainer measures the same way (``dsv3_edu.flops.matmul_peak``) at the start of a run,
so its MFU is a ratio from one run on one machine.

    python benchmarks/bench_matmul_peak.py                 # fp32 and bf16 on the default device
    python benchmarks/bench_matmul_peak.py --sizes 512 1024 2048 --device cpu
"""
from __future__ import annotations

import argparse
import platform

import torch

from dsv3_edu.flops import measure_matmul_peak
from dsv3_edu.runtime import cpu_has_native_bf16, get_device, resolve_dtype


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu, cuda (default: the trainer's choice)")
    p.add_argument("--sizes", type=int, nargs="*", help="square GEMM sizes n (default: by device)")
    p.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = p.parse_args(argv)
    device = get_device(args.device)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
          f"{torch.get_num_threads()} threads, torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if device.type == "cpu":
        print(f"native bf16 (avx512_bf16 / amx_bf16): {cpu_has_native_bf16()}")
    print(f"--dtype auto trains in {str(resolve_dtype('auto', device)).replace('torch.', '')} here")
    for name in args.dtypes:
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        r = measure_matmul_peak(dtype, device, tuple(args.sizes) if args.sizes else None)
        sizes = ", ".join(f"{n}^2: {f / 1e9:,.1f}" for n, f in r["by_size"].items())
        print(f"{name:>5}: peak {r['peak'] / 1e9:,.1f} GFLOP/s  ({sizes} GFLOP/s)")


if __name__ == "__main__":
    main()
