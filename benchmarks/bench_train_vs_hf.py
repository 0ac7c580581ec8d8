"""Training-step throughput: dsv3_edu vs transformers' DeepseekV3ForCausalLM at an identical config.

Both models get the same weights (converted with dsv3_edu.hf), the same batches, and the same numerics:
float32 on CPU (bf16 autocast on CUDA), no MTP and no balance loss (transformers has neither), AdamW.
Trials alternate between the two models in one process so machine noise hits both alike; we report the
median tokens/s of each and the ratio. The measurement is ``dsv3_edu.check.train_vs_hf`` (the GPU check's
``train`` part runs the same function).

    python benchmarks/bench_train_vs_hf.py                     # tiny preset, CPU
    python benchmarks/bench_train_vs_hf.py --preset small --device cuda --batch-size 16 --seq-len 512
Goal (issue #2): ours >= 1.5x transformers' tokens/s.
"""
from __future__ import annotations

import argparse
import platform

import torch

from dsv3_edu.check import train_vs_hf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--steps-per-trial", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = train_vs_hf(args.preset, args.batch_size, args.seq_len, args.trials, args.steps_per_trial, args.device,
                    count_flops=False)
    cuda = r["device"].startswith("cuda")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {r['device']}{' (' + torch.cuda.get_device_name() + ')' if cuda else ''}")
    print(f"torch {torch.__version__}, transformers {r['transformers_version']}, "
          f"experts implementation in transformers: {r['hf_experts_implementation']}, "
          f"attention: {r['hf_attention']}")
    print(f"config: preset {args.preset} without MTP, batch {args.batch_size} x {args.seq_len} tokens, "
          f"{args.trials} trials x {args.steps_per_trial} steps")
    fl = r["first_loss"]
    print(f"first-step loss on the same batch: dsv3_edu {fl['dsv3_edu']:.6f}  transformers {fl['transformers']:.6f}")
    for k, v in r["tokens_per_s"].items():
        trials = ", ".join(f"{t:,.0f}" for t in r["trials_tokens_per_s"][k])
        print(f"{k:>13}: {v:10,.0f} tokens/s (median; trials {trials})")
    print(f"ratio dsv3_edu / transformers: {r['ratio']:.2f}x  (goal >= 1.5x)")


if __name__ == "__main__":
    main()
