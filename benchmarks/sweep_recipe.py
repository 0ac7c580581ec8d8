"""The recipe sweep behind the default run: which model shape, vocabulary, batch, learning rate and MTP setting
learn most per FLOP on the default corpus, and how fast each runs here.

Every candidate trains for the same budget of model FLOPs (``dsv3_edu.flops``: steps are chosen so that
steps x tokens/step x FLOPs/token = budget), so the comparison does not depend on how loaded the machine is;
tokens/s and MFU are measured in the same runs and reported next to it (they do depend on the load). Each run
ends with validation bits/byte on the first ``--eval-batches`` validation batches, compared with xz on the
validation text. Results go to a JSON file under results/ and a table in docs/recipe.md (between markers).

    python benchmarks/sweep_recipe.py                              # all candidates, default budget
    python benchmarks/sweep_recipe.py --budget 2e12 --only cpu-d128 tiny
    python benchmarks/sweep_recipe.py --list
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from dsv3_edu.config import get_config
from dsv3_edu.flops import flops_per_token, matmul_peak
from dsv3_edu.runtime import get_device, resolve_dtype
from dsv3_edu.train import TrainConfig, evaluate, train

ROOT = Path(__file__).resolve().parents[1]

# name: (preset, model overrides, train overrides, vocab size)
CANDIDATES: dict[str, tuple[str, dict, dict, int]] = {
    "tiny": ("tiny", {}, {}, 8192),                                        # today's default (MTP on)
    "tiny-nomtp": ("tiny", {"n_mtp": 0}, {}, 8192),
    "cpu": ("cpu", {"n_mtp": 0}, {}, 8192),
    "cpu-mtp": ("cpu", {}, {}, 8192),
    "cpu-v4096": ("cpu", {"n_mtp": 0, "vocab_size": 4096}, {}, 4096),
    "cpu-v2048": ("cpu", {"n_mtp": 0, "vocab_size": 2048}, {}, 2048),
    "cpu-lr6e-3": ("cpu", {"n_mtp": 0}, {"lr": 6e-3}, 8192),
    "cpu-b32": ("cpu", {"n_mtp": 0}, {"batch_size": 32}, 8192),
    "nano": ("nano", {"n_mtp": 0}, {"lr": 3e-3}, 8192),
}


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "loadavg_at_start": load,
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


def run(name: str, budget: float, eval_batches: int, seed: int, dtype: str) -> dict:
    preset, mo, to, vocab = CANDIDATES[name]
    cfg = get_config(preset, **mo)
    tc = TrainConfig(preset=preset, model_overrides=mo, out_dir=None, seed=seed, dtype=dtype, mfu=False,
                     eval_batches=eval_batches, log_every=10, **to)
    fpt = flops_per_token(cfg, tc.seq_len)["total"]
    tokens_per_step = tc.batch_size * tc.seq_len * tc.grad_accum
    tc.steps = max(20, round(budget / (fpt * tokens_per_step)))     # at least 20: the TFLOPs column shows it
    tc.warmup_steps = max(5, min(tc.warmup_steps, tc.steps // 10))
    tc.eval_every = tc.steps
    ds = dataset_for(vocab)
    t0 = time.perf_counter()
    res = train(tc, dataset=ds, progress=True, model_cfg=cfg)
    wall = time.perf_counter() - t0
    ev = evaluate(res.model, ds, tc, get_device(tc.device))
    row = {"name": name, "preset": preset, "model_overrides": mo, "train_overrides": to, "vocab_size": vocab,
           "params": res.model.num_params(), "flops_per_token": fpt, "steps": tc.steps,
           "tokens": tc.steps * tokens_per_step, "batch_size": tc.batch_size, "seq_len": tc.seq_len, "lr": tc.lr,
           "n_mtp": cfg.n_mtp, "val_loss": ev["val_loss"], "val_bpb": ev.get("val_bpb"), "xz": ds.compressors.get("xz"),
           "mtp_acceptance": ev.get("mtp_acceptance"), "wall_s": wall, "tokens_per_s": res.tokens_per_s}
    row["bpb_vs_xz"] = row["val_bpb"] / row["xz"] if row["val_bpb"] and row["xz"] else None
    return row


def table(rows: list[dict]) -> str:
    """Best bits/byte first. tokens/s and achieved GFLOP/s depend on the machine's load when each ran."""
    head = ("| candidate | vocab | params | MTP | lr | batch x seq | GFLOP/token | tokens | TFLOPs | val loss (nats) | "
            "val bits/byte | / xz | MTP accept | tokens/s | GFLOP/s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: r["val_bpb"] or 9):
        gflops = f"{r['tokens_per_s'] * r['flops_per_token'] / 1e9:.2f}"
        acc = f"{r['mtp_acceptance']:.1%}" if r.get("mtp_acceptance") is not None else "-"
        lines.append(f"| {r['name']} | {r['vocab_size']} | {r['params'] / 1e6:.2f}M | {r['n_mtp']} | {r['lr']:g} | "
                     f"{r['batch_size']} x {r['seq_len']} | {r['flops_per_token'] / 1e9:.4f} | {r['tokens']:,} | "
                     f"{r['tokens'] * r['flops_per_token'] / 1e12:.2f} | "
                     f"{r['val_loss']:.3f} | {r['val_bpb']:.3f} | {r['bpb_vs_xz']:.2f} | {acc} | "
                     f"{r['tokens_per_s']:,.0f} | {gflops} |")
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
    lines = [f"Budget {result['budget_flops']:.1e} model FLOPs per candidate, {result['dtype']}, "
             f"written to `{where}` by:", ""]
    for x in result.get("sweeps", []):
        m = x.get("machine") or {}
        load = ", ".join(f"{v:.1f}" for v in m.get("loadavg_at_start") or []) or "not recorded"
        peak = f"{x['matmul_peak_flops'] / 1e9:.1f} GFLOP/s" if x.get("matmul_peak_flops") else "not recorded"
        lines.append(f"* `{x['command']}` ({m.get('threads', '?')} thread(s), load average at start {load}, "
                     f"matmul peak then {peak}){' ' + x['note'] if x.get('note') else ''}")
    return "\n".join(lines) + "\n\n" + table(result["runs"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=1e12, help="model FLOPs per candidate (default 1e12)")
    p.add_argument("--only", nargs="*", help="candidate names (default: all)")
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice; 1 on a loaded machine, where "
                   "OpenMP threads that wait for a busy core cost more than they bring)")
    p.add_argument("--out", default=str(ROOT / "results" / "sweep_recipe.json"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "recipe.md"))
    p.add_argument("--list", action="store_true")
    p.add_argument("--table-only", action="store_true", help="rewrite the docs table from --out, train nothing")
    args = p.parse_args(argv)
    if args.list:
        for k, v in CANDIDATES.items():
            print(f"{k:>20}: preset {v[0]}, model {v[1]}, train {v[2]}, vocab {v[3]}")
        return 0
    out = Path(args.out)
    if args.table_only:
        write_doc(Path(args.doc), doc_text(json.loads(out.read_text()), out))
        return 0
    names = args.only or list(CANDIDATES)
    bad = sorted(set(names) - set(CANDIDATES))
    if bad:
        print(f"error: unknown candidates {bad}; see --list", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device("auto")
    dtype = resolve_dtype(args.dtype, device)
    peak, mach = matmul_peak(dtype, device), machine()
    prev = json.loads(out.read_text()) if out.exists() else {"runs": []}
    rows = [r for r in prev.get("runs", []) if r["name"] not in names and r.get("budget") == args.budget]
    t0 = time.perf_counter()
    for name in names:
        print(f"--- {name}", flush=True)
        r = run(name, args.budget, args.eval_batches, args.seed, args.dtype)
        r["budget"] = args.budget
        rows.append(r)
        print(json.dumps(r), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        mine = {r["name"] for r in rows}                 # other sweeps may write the same file: merge theirs in
        theirs = json.loads(out.read_text()).get("runs", []) if out.exists() else []
        rows = rows + [r for r in theirs if r["name"] not in mine and r.get("budget") == args.budget]
        cmd = ("python benchmarks/sweep_recipe.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
        info = {"command": cmd, "machine": mach, "device": str(device), "matmul_peak_flops": peak,
                "wall_s": time.perf_counter() - t0}
        old = json.loads(out.read_text()) if out.exists() else {}
        sweeps = [x for x in old.get("sweeps", []) if x["command"] != cmd] + [info]
        result = {"budget_flops": args.budget, "dtype": str(dtype).replace("torch.", ""), "sweeps": sweeps,
                  "runs": rows}
        out.write_text(json.dumps(result, indent=1) + "\n")
        write_doc(Path(args.doc), doc_text(result, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
