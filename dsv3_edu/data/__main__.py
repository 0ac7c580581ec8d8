"""Command line for the data pipeline.

    python -m dsv3_edu.data build [--source PATH ...] [--out DIR] [--vocab-size N] [--train-tokenizer]
                                  [--tokenizer FILE] [--fim-rate R] [--val-fraction F] [--seed S]
                                  [--max-bytes N] [--strict] [--rebuild]
    python -m dsv3_edu.data tokenizer --vocab-size V --out dsv3_edu/data/tokenizers/bpe-V.json   # retrain one
    python -m dsv3_edu.data stats [--vocab-size N] [--out DIR]   # the built dataset's manifest, summarized
    python -m dsv3_edu.data stats --source PATH ... [--tokenizer FILE]   # tokens per byte of other text
    python -m dsv3_edu.data packing [--seq-len T]   # truncated-document and padding shares, both packings
"""
from __future__ import annotations

import argparse
import json
import time

from .build import DEFAULT_FIM_RATE, DEFAULT_VAL_FRACTION, build_dataset, load_corpus, train_default_tokenizer
from .corpus import DEFAULT_MAX_BYTES
from .packing import PACKINGS
from .tokenizer import DEFAULT_VOCAB_SIZE, load_tokenizer, token_stats


def manifest_summary(m: dict) -> dict:
    """What ``stats`` prints of a build's manifest: corpus and its rule, dropped files, splits, compressors."""
    c = m["corpus"]
    return {
        "corpus": {k: c[k] for k in ("source", "files", "bytes", "skipped_files", "python", "rule") if k in c},
        "candidates_before_rule": c.get("candidates"),
        "dropped_files": c.get("dropped_files", 0),
        "dropped": c.get("dropped", {}),
        "vocab_size": m["tokenizer"]["vocab_size"],
        "tokens_per_byte": m["tokens_per_byte"],
        "splits": {s: {k: v for k, v in m["splits"][s].items() if k != "names"} for s in m["splits"]},
        "val_bits_per_byte_of_compressors": m.get("compressors", {}),
        "build_seconds": m["build_seconds"],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m dsv3_edu.data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="build (or reuse) the packed train/val token streams")
    b.add_argument("--source", nargs="+", default=None, help="text files/folders (default: Python stdlib)")
    b.add_argument("--out", default=None, help="output folder (default: <repo>/data/build)")
    b.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    g = b.add_mutually_exclusive_group()
    g.add_argument("--train-tokenizer", action="store_true", help="train a new BPE instead of the committed one")
    g.add_argument("--tokenizer", default=None, help="path to a tokenizer.json to use")
    b.add_argument("--fim-rate", type=float, default=DEFAULT_FIM_RATE)
    b.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="cap of the default corpus")
    b.add_argument("--strict", action="store_true", help="fail on binary/non-UTF-8 files instead of skipping")
    b.add_argument("--rebuild", action="store_true", help="rebuild even if the cache matches")

    t = sub.add_parser("tokenizer", help="train a tokenizer with the packaged ones' recipe (dsv3_edu/data/tokenizers/)")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    t.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)

    s = sub.add_parser("stats", help="the built dataset's manifest (default corpus), or tokens per byte of "
                                     "a tokenizer on --source")
    s.add_argument("--source", nargs="+", default=None, help="text files/folders: print tokens per byte only")
    s.add_argument("--tokenizer", default=None)
    s.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    s.add_argument("--out", default=None, help="build folder (default: <repo>/data/build/vocab<V>)")
    s.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)

    k = sub.add_parser("packing", help="truncated-document share and padding share of each packing")
    k.add_argument("--seq-len", type=int, nargs="+", default=[128, 512])
    k.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    k.add_argument("--split", default="train", choices=("train", "val"))

    a = p.parse_args(argv)
    if a.cmd == "build":
        tok = "train" if a.train_tokenizer else a.tokenizer
        built = build_dataset(a.source, a.out, a.vocab_size, tok, a.fim_rate, a.val_fraction, a.seed,
                              a.max_bytes, strict=a.strict, rebuild=a.rebuild)
        m = built.manifest
        corpus = {k: v for k, v in m["corpus"].items() if k != "dropped"}
        print(json.dumps({"out_dir": str(built.out_dir), "corpus": corpus,
                          "train_tokens": m["splits"]["train"]["tokens"], "val_tokens": m["splits"]["val"]["tokens"],
                          "vocab_size": m["tokenizer"]["vocab_size"], "tokens_per_byte": m["tokens_per_byte"],
                          "compressors": m["compressors"], "build_seconds": m["build_seconds"]}, indent=2))
    elif a.cmd == "tokenizer":
        t0 = time.perf_counter()
        tok = train_default_tokenizer(a.vocab_size, a.max_bytes)
        tok.save(a.out)
        print(f"{tok} -> {a.out} ({time.perf_counter() - t0:.1f} s, sha256 {tok.sha256()[:16]})")
    elif a.cmd == "stats" and a.source is not None:
        corpus = load_corpus(a.source, a.max_bytes)
        stats = token_stats(load_tokenizer(a.tokenizer), corpus)
        print(json.dumps({"documents": len(corpus), **stats}, indent=2))
    elif a.cmd == "stats":
        built = build_dataset(None, a.out, a.vocab_size, a.tokenizer, max_bytes=a.max_bytes)
        print(json.dumps(manifest_summary(built.manifest), indent=2))
    else:
        ds = build_dataset(vocab_size=a.vocab_size).dataset()
        rows = [ds.packing_stats(a.split, t, p) for t in a.seq_len for p in PACKINGS]
        print(f"{'seq_len':>7} {'packing':>8} {'documents':>9} {'truncated':>9} {'padding':>8}")
        for t, r in zip([t for t in a.seq_len for _ in PACKINGS], rows):
            print(f"{t:>7} {r['packing']:>8} {r['documents']:>9} {r['truncated_share']:>9.1%} "
                  f"{r['padding_share']:>8.1%}")


if __name__ == "__main__":
    main()
