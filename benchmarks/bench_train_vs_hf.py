"""Training-step throughput: dsv3_edu vs transformers' DeepseekV3ForCausalLM at an identical config.

Both models get the same weights (converted with dsv3_edu.hf), the same batches, and the same numerics:
float32 on CPU (bf16 autocast on CUDA), no MTP and no balance loss (transformers has neither), AdamW.
Trials alternate between the two models in one process so machine noise hits both alike; we report the
median tokens/s of each and the ratio.

    python benchmarks/bench_train_vs_hf.py                     # tiny preset, CPU
    python benchmarks/bench_train_vs_hf.py --preset small --device cuda --batch-size 16 --seq-len 512
Goal (issue #2): ours >= 1.5x transformers' tokens/s.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from dsv3_edu.config import get_config
from dsv3_edu.hf import save_hf
from dsv3_edu.model import Transformer
from dsv3_edu.runtime import autocast, get_device


def step_fn(model, opt, x, y, device, ours: bool):
    with autocast(device):
        if ours:
            loss = model(x, y).loss
        else:
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


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
    from transformers import DeepseekV3ForCausalLM
    import transformers

    device = get_device(args.device)
    cfg = get_config(args.preset, n_mtp=0, seq_aux_alpha=0.0)
    torch.manual_seed(0)
    ours = Transformer(cfg)
    with tempfile.TemporaryDirectory() as d:
        save_hf(ours, d)
        theirs = DeepseekV3ForCausalLM.from_pretrained(d, dtype=torch.float32)
    ours, theirs = ours.to(device).train(), theirs.to(device).train()
    models = {"dsv3_edu": (ours, True), "transformers": (theirs, False)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95)) for k, (m, _) in models.items()}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1), generator=g)
    x, y = x[:, :-1].to(device), x[:, 1:].to(device)

    # same numerics check: the first loss of each model on the same batch
    with torch.no_grad():
        l_ours = ours(x, y).main_loss.item()
        lt = theirs(input_ids=x).logits
        l_theirs = torch.nn.functional.cross_entropy(lt.float().view(-1, lt.size(-1)), y.reshape(-1)).item()
    for name, (m, is_ours) in models.items():  # warm-up
        step_fn(m, opts[name], x, y, device, is_ours)
    tps = {k: [] for k in models}
    tokens = args.batch_size * args.seq_len * args.steps_per_trial
    for _ in range(args.trials):
        for name, (m, is_ours) in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps_per_trial):
                step_fn(m, opts[name], x, y, device, is_ours)
            if device.type == "cuda":
                torch.cuda.synchronize()
            tps[name].append(tokens / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in tps.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {device}{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"experts implementation in transformers: {theirs.config._experts_implementation}, "
          f"attention: {theirs.config._attn_implementation}")
    print(f"config: preset {args.preset} without MTP, batch {args.batch_size} x {args.seq_len} tokens, "
          f"{args.trials} trials x {args.steps_per_trial} steps")
    print(f"first-step loss on the same batch: dsv3_edu {l_ours:.6f}  transformers {l_theirs:.6f}")
    for k, v in med.items():
        print(f"{k:>13}: {v:10,.0f} tokens/s (median; trials {', '.join(f'{t:,.0f}' for t in tps[k])})")
    print(f"ratio dsv3_edu / transformers: {med['dsv3_edu'] / med['transformers']:.2f}x  (goal >= 1.5x)")


if __name__ == "__main__":
    main()
