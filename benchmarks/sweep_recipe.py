"""The recipe sweep behind the default run: which model shape, vocabulary, sequence length, learning rate and MTP
setting reach the lowest validation bits/byte in the same minutes of this machine.

Equal wall-clock, made reproducible: each candidate's training speed is first *probed* (``--probe``: a few warm-up
steps, then timed steps on random tokens, one candidate after another on a quiet machine, all at the same thread
count) and kept in the results file. A candidate then trains for ``seconds x probed tokens/s`` tokens, so its
result does not depend on how loaded the machine is while it trains, and the training runs may share the machine.
Each run ends with validation bits/byte on the first ``--eval-batches`` validation batches (whole documents, the
trainer's evaluation), compared with xz on the validation text. Results go to results/sweep_recipe.json and a
table in docs/recipe.md (between markers).

    python benchmarks/sweep_recipe.py --probe                      # tokens/s of every candidate (quiet machine!)
    python benchmarks/sweep_recipe.py --seconds 240                # train every probed candidate for 240 s' worth
    python benchmarks/sweep_recipe.py --seconds 240 --only v4096-lr4e-3 tiny-v4096
    python benchmarks/sweep_recipe.py --list
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from dsv3_edu.config import get_config
from dsv3_edu.flops import flops_per_token, matmul_peak
from dsv3_edu.runtime import get_device, resolve_dtype
from dsv3_edu.train import TrainConfig, make_optimizer, train, train_step

ROOT = Path(__file__).resolve().parents[1]

# name: (preset, model overrides, train overrides); MTP is off unless a candidate turns it on
CANDIDATES: dict[str, tuple[str, dict, dict]] = {
    "cpu-v8192": ("cpu", {"vocab_size": 8192}, {"lr": 2e-3}),                   # the default before this sweep
    "v4096-lr2e-3": ("cpu", {"vocab_size": 4096}, {"lr": 2e-3}),
    "v4096-lr4e-3": ("cpu", {"vocab_size": 4096}, {"lr": 4e-3}),
    "v4096-lr8e-3": ("cpu", {"vocab_size": 4096}, {"lr": 8e-3}),
    "v2048-lr4e-3": ("cpu", {"vocab_size": 2048}, {"lr": 4e-3}),
    "v4096-T256": ("cpu", {"vocab_size": 4096}, {"lr": 4e-3, "batch_size": 8, "seq_len": 256}),
    "v4096-mtp": ("cpu", {"vocab_size": 4096, "n_mtp": 1}, {"lr": 4e-3}),
    "v4096-d192": ("cpu", {"vocab_size": 4096, "dim": 192, "inter_dim": 576, "moe_inter_dim": 128,
                           "q_lora_rank": 96}, {"lr": 4e-3}),
    "tiny-v4096": ("tiny", {"vocab_size": 4096, "n_mtp": 0}, {"lr": 3e-3}),
}


def _setup(name: str, seed: int = 0, dtype: str = "auto"):
    preset, mo, to = CANDIDATES[name]
    mo = {"n_mtp": 0, **mo}
    cfg = get_config(preset, **mo)
    tc = TrainConfig(preset=preset, model_overrides=mo, out_dir=None, seed=seed, dtype=dtype, mfu=False, **to)
    return cfg, tc


def shape_of(name: str) -> str:
    """What sets a candidate's speed: the model and the batch shape (not the learning rate)."""
    cfg, tc = _setup(name)
    return json.dumps([cfg.to_dict(), tc.batch_size, tc.seq_len], sort_keys=True)


def probe(name: str, warmup: int = 3, steps: int = 20, dtype: str = "auto") -> float:
    """Training tokens/s of a candidate: ``steps`` timed optimizer steps on random tokens after ``warmup``."""
    from dsv3_edu.model import Transformer
    cfg, tc = _setup(name, dtype=dtype)
    device = get_device(tc.device)
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    opt = make_optimizer(model, tc)

    def batches():
        while True:
            x = torch.randint(5, cfg.vocab_size, (tc.batch_size, tc.seq_len), device=device)
            yield x, x.roll(-1, 1)

    it = batches()
    for _ in range(warmup):
        train_step(model, opt, it, tc, tc.lr, device)
    t0 = time.perf_counter()
    for _ in range(steps):
        stats = train_step(model, opt, it, tc, tc.lr, device)
    stats.losses.sum().item()                            # wait for the device
    return steps * tc.batch_size * tc.seq_len / (time.perf_counter() - t0)


def machine() -> dict:
    from dsv3_edu.experiments import machine_info
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {**machine_info(), "threads": torch.get_num_threads(), "loadavg_at_start": load,
            "git": _git("rev-parse", "--short", "HEAD")}


def _git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def dataset_for(vocab: int):
    """The default corpus tokenized at ``vocab`` (built once per vocab size, cached under data/build/)."""
    from dsv3_edu.data import build_dataset
    return build_dataset(vocab_size=vocab, progress=True).dataset()


def run(name: str, seconds: float, tokens_per_s: float, eval_batches: int, seed: int, dtype: str) -> dict:
    cfg, tc = _setup(name, seed, dtype)
    fpt = flops_per_token(cfg, tc.seq_len)["total"]
    tokens_per_step = tc.batch_size * tc.seq_len * tc.grad_accum
    tc.steps = max(20, round(seconds * tokens_per_s / tokens_per_step))
    tc.warmup_steps = max(5, min(tc.warmup_steps, tc.steps // 10))
    tc.eval_every, tc.eval_batches = tc.steps, eval_batches
    ds = dataset_for(cfg.vocab_size)
    t0 = time.perf_counter()
    res = train(tc, dataset=ds, progress=True, model_cfg=cfg)
    wall = time.perf_counter() - t0
    ev = res.final_eval
    row = {"name": name, "preset": CANDIDATES[name][0], "model_overrides": tc.model_overrides,
           "train_overrides": CANDIDATES[name][2], "vocab_size": cfg.vocab_size, "params": res.model.num_params(),
           "flops_per_token": fpt, "probe_tokens_per_s": tokens_per_s, "seconds": seconds, "steps": tc.steps,
           "tokens": tc.steps * tokens_per_step, "batch_size": tc.batch_size, "seq_len": tc.seq_len, "lr": tc.lr,
           "n_mtp": cfg.n_mtp, "val_loss": ev["val_loss"], "val_bpb": ev.get("val_bpb"), "xz": ds.compressors.get("xz"),
           "mtp_acceptance": ev.get("mtp_acceptance"), "eval_batches": eval_batches, "wall_s": wall,
           "tokens_per_s": res.tokens_per_s}
    row["bpb_vs_xz"] = row["val_bpb"] / row["xz"] if row["val_bpb"] and row["xz"] else None
    return row


def table(rows: list[dict]) -> str:
    """Best bits/byte first. "probed" = the quiet-machine speed that set the candidate's token budget."""
    head = ("| candidate | vocab | params | MTP | lr | batch x seq | probed tokens/s | probed MFU | tokens | "
            "val loss (nats) | val bits/byte | / xz | MTP accept |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: r["val_bpb"] or 9):
        mfu = f"{r['probe_mfu']:.0%}" if r.get("probe_mfu") else "-"
        acc = f"{r['mtp_acceptance']:.1%}" if r.get("mtp_acceptance") is not None else "-"
        lines.append(f"| {r['name']} | {r['vocab_size']} | {r['params'] / 1e6:.2f}M | {r['n_mtp']} | {r['lr']:g} | "
                     f"{r['batch_size']} x {r['seq_len']} | {r['probe_tokens_per_s']:,.0f} | {mfu} | "
                     f"{r['tokens']:,} | {r['val_loss']:.3f} | {r['val_bpb']:.3f} | {r['bpb_vs_xz']:.2f} | {acc} |")
    return "\n".join(lines)


BEGIN, END = "<!-- sweep table: begin (benchmarks/sweep_recipe.py writes this) -->", "<!-- sweep table: end -->"


def write_doc(path: Path, text: str) -> None:
    doc = path.read_text() if path.exists() else f"# The default recipe\n\n{BEGIN}\n{END}\n"
    if BEGIN not in doc:
        doc += f"\n{BEGIN}\n{END}\n"
    pre, rest = doc.split(BEGIN, 1)
    post = rest.split(END, 1)[1]
    path.write_text(f"{pre}{BEGIN}\n{text}\n{END}{post}")


def doc_text(result: dict, out: Path) -> str:
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    pr = result.get("probe", {})
    m = pr.get("machine") or {}
    load = ", ".join(f"{v:.1f}" for v in m.get("loadavg_at_start") or []) or "not recorded"
    peak = pr.get("matmul_peak_flops")
    lines = [f"Each candidate trained for {result['seconds']:g} s of its probed speed ({result['dtype']}), written to "
             f"`{where}`. Speeds from `{pr.get('command', '?')}` on {m.get('cpu') or '?'} "
             f"({m.get('cores', '?')} cores, {m.get('threads', '?')} threads, load average at start {load}, "
             f"fp32 matmul peak {peak / 1e9:.0f} GFLOP/s measured in the same run)" if peak else "", "", "Runs:"]
    for x in result.get("sweeps", []):
        lines.append(f"* `{x['command']}` ({x['wall_s'] / 60:.0f} min)")
    return "\n".join(lines) + "\n\n" + table(result["runs"])


def _load(out: Path) -> dict:
    return json.loads(out.read_text()) if out.exists() else {}


def _save(out: Path, result: dict, doc: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if result.get("runs"):
        write_doc(doc, doc_text(result, out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe", action="store_true", help="measure every candidate's training tokens/s and store them "
                   "(run on a quiet machine; training later reads them)")
    p.add_argument("--seconds", type=float, default=240.0, help="training time per candidate at its probed speed "
                   "(default 240)")
    p.add_argument("--only", nargs="*", help="candidate names (default: all)")
    p.add_argument("--eval-batches", type=int, default=64, help="validation batches scored at the end (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=str(ROOT / "results" / "sweep_recipe.json"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "recipe.md"))
    p.add_argument("--list", action="store_true", help="list the candidates and exit")
    p.add_argument("--table-only", action="store_true", help="rewrite the docs table from --out, train nothing")
    args = p.parse_args(argv)
    if args.list:
        for k, (preset, mo, to) in CANDIDATES.items():
            print(f"{k:>14}: preset {preset}, model {mo}, train {to}")
        return 0
    out, doc = Path(args.out), Path(args.doc)
    if args.table_only:
        write_doc(doc, doc_text(_load(out), out))
        return 0
    names = args.only or list(CANDIDATES)
    bad = sorted(set(names) - set(CANDIDATES))
    if bad:
        print(f"error: unknown candidates {bad}; see --list", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cmd = ("python benchmarks/sweep_recipe.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    device = get_device("auto")
    dtype = resolve_dtype(args.dtype, device)
    t0 = time.perf_counter()
    if args.probe:
        mach = machine()                                  # load average before this process adds its own
        info = {"command": cmd, "machine": mach, "device": str(device), "matmul_peak_flops": matmul_peak(dtype, device),
                "tokens_per_s": {}, "mfu": {}}
        for v in sorted({CANDIDATES[n][1].get("vocab_size", 8192) for n in names}):
            dataset_for(v)                                # build the data now, not inside a timed training run
        for name in names:
            tps = probe(name, dtype=args.dtype)
            cfg, tc = _setup(name)
            info["tokens_per_s"][name] = tps
            info["mfu"][name] = tps * flops_per_token(cfg, tc.seq_len)["total"] / info["matmul_peak_flops"]
            print(f"{name:>14}: {tps:,.0f} tokens/s, MFU {info['mfu'][name]:.0%}", flush=True)
        info["wall_s"] = time.perf_counter() - t0
        result = _load(out)
        if result.get("probe"):                           # keep the other candidates' earlier speeds
            for k in ("tokens_per_s", "mfu"):
                info[k] = {**result["probe"].get(k, {}), **info[k]}
        result["probe"] = info
        _save(out, result, doc)
        return 0
    probed = _load(out).get("probe", {}).get("tokens_per_s", {})
    missing = [n for n in names if n not in probed]
    if missing:
        print(f"error: no probed speed for {missing}; run with --probe first (on a quiet machine)", file=sys.stderr)
        return 2
    for name in names:
        print(f"--- {name}", flush=True)
        same = [v for k, v in probed.items() if k in CANDIDATES and shape_of(k) == shape_of(name)]
        tps = sum(same) / len(same)                       # candidates of one shape (lr only differs) share a speed
        r = run(name, args.seconds, tps, args.eval_batches, args.seed, args.dtype)
        r["probe_mfu"] = _load(out).get("probe", {}).get("mfu", {}).get(name)
        print(json.dumps(r), flush=True)
        result = _load(out)                               # other sweeps may write the same file: merge
        if result.get("seconds") != args.seconds:
            result["runs"], result["sweeps"] = [], []
        result["seconds"], result["dtype"] = args.seconds, str(dtype).replace("torch.", "")
        result["runs"] = [x for x in result.get("runs", []) if x["name"] != name] + [r]
        info = {"command": cmd, "machine": machine(), "wall_s": time.perf_counter() - t0}
        result["sweeps"] = [x for x in result.get("sweeps", []) if x["command"] != cmd] + [info]
        _save(out, result, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
