"""How the sampling temperature moves the Python-likeness of a trained model's samples.

The trainer scores 12 samples at temperature 0.8 (``dsv3_edu.evaluate.sample_python_likeness``: the share of
complete top-level statements that compile). This script scores one checkpoint at several temperatures with more
seeds, so the figure comes with a 95% interval (bootstrap over samples: a sample's statements are not
independent), and beside it the share of *distinct* sampled lines: a cold sampler can reach a high score by
repeating one valid line, and that should show. Results go to results/sweep_sampling.json and a table in
docs/recipe.md (between markers).

    python -m dsv3_edu train --out-dir runs/default            # the README's first command (a checkpoint)
    python benchmarks/sweep_sampling.py --ckpt runs/default
    python benchmarks/sweep_sampling.py --ckpt runs/default --temperatures 0.4 0.8 --seeds 4
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dsv3_edu.data import build_dataset, load_tokenizer
from dsv3_edu.evaluate import (
    DEFAULT_PROMPTS,
    distinct_line_share,
    heldout_documents,
    pooled_python_likeness,
    python_likeness_interval,
    sample_python_likeness,
)
from dsv3_edu.experiments import machine_info
from dsv3_edu.train import checkpoint_tokenizer, load_model

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- sampling table: begin (benchmarks/sweep_sampling.py writes this) -->"
END = "<!-- sampling table: end -->"


def score(model, tok, temperature: float, seeds: int) -> dict:
    t0 = time.perf_counter()
    r = sample_python_likeness(model, tok, DEFAULT_PROMPTS, tuple(range(seeds)), temperature=temperature)
    skips = r["skips"]
    u = pooled_python_likeness(r["samples"], skips=skips, unique=True)
    return {"temperature": temperature, "share": r["share"], "parsed": r["parsed"], "statements": r["statements"],
            "ci95": python_likeness_interval(r["samples"], skips), "unique_share": u["share"],
            "unique_parsed": u["parsed"], "unique_statements": u["statements"],
            "unique_ci95": python_likeness_interval(r["samples"], skips, unique=True),
            "distinct_lines": distinct_line_share(r["samples"]), "n_samples": len(r["samples"]),
            "seconds": time.perf_counter() - t0, "samples": r["samples"][:2]}


def table(res: dict) -> str:
    ceiling, uceiling = res["heldout"]["share"], res["heldout_unique"]["share"]
    lines = [f"Checkpoint `{res['ckpt']}`, {res['rows'][0]['n_samples']} samples of 256 tokens per temperature "
             f"({len(DEFAULT_PROMPTS)} prompts x {res['seeds']} seeds); 95% intervals by bootstrap over samples. "
             f"Held-out code cut the same way: {ceiling:.0%} of its statements compile, {uceiling:.0%} of its "
             f"distinct ones; {res['heldout_distinct_lines']:.0%} of its lines are distinct.", "",
             "| temperature | statements that compile | / held-out | distinct statements that compile | / held-out "
             "| distinct lines |",
             "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        (lo, hi), (ulo, uhi) = r["ci95"], r["unique_ci95"]
        lines.append(f"| {r['temperature']:g} | {r['share']:.0%} [{lo:.0%}, {hi:.0%}] ({r['parsed']} of "
                     f"{r['statements']}) | {r['share'] / ceiling:.2f} | {r['unique_share']:.0%} [{ulo:.0%}, "
                     f"{uhi:.0%}] ({r['unique_parsed']} of {r['unique_statements']}) | "
                     f"{r['unique_share'] / uceiling:.2f} | {r['distinct_lines']:.0%} |")
    return "\n".join(lines)


def write_table(text: str, path: Path = ROOT / "docs" / "recipe.md") -> None:
    doc = path.read_text()
    if BEGIN not in doc:
        doc = doc.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = doc.split(BEGIN, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", default="runs/default", help="run folder (default: %(default)s)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    ap.add_argument("--seeds", type=int, default=8, help="seeds per prompt (default: %(default)s)")
    ap.add_argument("--out", default=str(ROOT / "results" / "sweep_sampling.json"))
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite the table in docs/recipe.md")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = load_model(args.ckpt)
    tok = load_tokenizer(checkpoint_tokenizer(args.ckpt))
    val = build_dataset(vocab_size=model.cfg.vocab_size).dataset()["val"]
    docs = heldout_documents(val, tok)
    heldout, heldout_unique = pooled_python_likeness(docs), pooled_python_likeness(docs, unique=True)
    rows = []
    for t in args.temperatures:
        rows.append(score(model, tok, t, args.seeds))
        r = rows[-1]
        print(f"T={t:g}: {r['share']:.0%} ({r['parsed']} of {r['statements']}), distinct statements "
              f"{r['unique_share']:.0%}, distinct lines {r['distinct_lines']:.0%}, {r['seconds']:.0f} s", flush=True)
    res = {"command": " ".join(["python benchmarks/sweep_sampling.py", *sys.argv[1:]]), "ckpt": args.ckpt,
           "seeds": args.seeds,
           "heldout": heldout, "heldout_unique": heldout_unique, "heldout_distinct_lines": distinct_line_share(docs),
           "rows": rows, "machine": {**machine_info(), "threads": torch.get_num_threads()},
           "wall_s": time.perf_counter() - t0}
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    if not args.no_doc:
        write_table(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
