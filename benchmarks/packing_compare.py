"""Concatenate-and-chunk vs best-fit packing, judged by validation bits per byte (same model, data, steps, seeds).

    python benchmarks/packing_compare.py --preset nano --steps 300 --seeds 0 1

Each run trains from the same initialisation (per seed) on windows of the default training stream drawn by
``dataset.random(..., packing=...)``; validation bits/byte scores every validation token once
(``dsv3_edu.evaluate.evaluate_bits_per_byte``). Prints one JSON line per run and the paired differences.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from dsv3_edu.data import TokenDataset, build_dataset
from dsv3_edu.evaluate import evaluate_bits_per_byte
from dsv3_edu.train import TrainConfig, train


class Packed(TokenDataset):
    """The built dataset with its training batches drawn by one packing."""

    def __init__(self, ds: TokenDataset, packing: str):
        self.__dict__.update(ds.__dict__)
        self.packing = packing

    def random(self, split, batch_size, seq_len, seed=0, device=None, packing=None):
        return super().random(split, batch_size, seq_len, seed, device, packing=packing or self.packing)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="nano")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--eval-batches", type=int, default=None,
                   help="score only the first N validation batches of 32 windows (default: all of it)")
    a = p.parse_args(argv)
    base = build_dataset(progress=False).dataset()
    results = {}
    for seed in a.seeds:
        for packing in ("concat", "bestfit"):
            tc = TrainConfig(preset=a.preset, steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, lr=a.lr,
                             warmup_steps=max(1, a.steps // 10), eval_every=a.steps, eval_batches=1,
                             log_every=a.steps, seed=seed, out_dir=None, plots=False)
            t0 = time.perf_counter()
            res = train(tc, dataset=Packed(base, packing), progress=False)
            r = evaluate_bits_per_byte(res.model, base, 32, a.seq_len, max_batches=a.eval_batches)
            results[(seed, packing)] = r["bits_per_byte"]
            print(json.dumps({"seed": seed, "packing": packing, "val_bits_per_byte": round(r["bits_per_byte"], 4),
                              "val_loss": round(r["loss"], 4), "val_bytes": r["bytes"], "xz": r.get("xz"),
                              "train_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    diffs = [results[(s, "bestfit")] - results[(s, "concat")] for s in a.seeds]
    print(json.dumps({"bestfit_minus_concat": [round(d, 4) for d in diffs], "preset": a.preset, "steps": a.steps,
                      "batch_size": a.batch_size, "seq_len": a.seq_len, "machine": platform.processor() or
                      platform.machine(), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
