"""Command line for the data pipeline.

    python -m dsv3_edu.data build [--source PATH ...] [--out DIR] [--vocab-size N] [--train-tokenizer]
                                  [--tokenizer FILE] [--fim-rate R] [--val-fraction F] [--seed S]
                                  [--max-bytes N] [--strict] [--rebuild]
    python -m dsv3_edu.data tokenizer --out data/tokenizer.json   # retrain the committed tokenizer
    python -m dsv3_edu.data stats [--source PATH ...] [--tokenizer FILE]   # tokens per byte
"""
from __future__ import annotations

import argparse
import json
import time

from .build import DEFAULT_FIM_RATE, DEFAULT_VAL_FRACTION, build_dataset, load_corpus, train_default_tokenizer
from .corpus import DEFAULT_MAX_BYTES
from .tokenizer import DEFAULT_VOCAB_SIZE, load_tokenizer, token_stats


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m dsv3_edu.data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="build (or reuse) the packed train/val token streams")
    b.add_argument("--source", nargs="+", default=None, help="text files/folders (default: Python stdlib)")
    b.add_argument("--out", default=None, help="output folder (default: <repo>/data/build)")
    b.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                   help="vocabulary of a newly trained BPE (default: %(default)s)")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--train-tokenizer", action="store_true", help="train a new BPE instead of the committed one")
    g.add_argument("--tokenizer", default=None, help="path to a tokenizer.json to use")
    b.add_argument("--fim-rate", type=float, default=DEFAULT_FIM_RATE,
                   help="fraction of train documents rewritten as fill-in-the-middle (PSM) (default: %(default)s)")
    b.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help="fraction of documents held out for validation (default: %(default)s)")
    b.add_argument("--seed", type=int, default=0, help="seed of the split and the FIM choices (default: %(default)s)")
    b.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help="cap of the default corpus in bytes (default: %(default)s)")
    b.add_argument("--strict", action="store_true", help="fail on binary/non-UTF-8 files instead of skipping")
    b.add_argument("--rebuild", action="store_true", help="rebuild even if the cache matches")

    t = sub.add_parser("tokenizer", help="train the default tokenizer (the committed data/tokenizer.json)")
    t.add_argument("--out", required=True, help="where to write the tokenizer.json")
    t.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="vocabulary size (default: %(default)s)")
    t.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help="bytes of the default corpus to train on (default: %(default)s)")

    s = sub.add_parser("stats", help="tokens per byte of a tokenizer on a corpus")
    s.add_argument("--source", nargs="+", default=None, help="text files/folders (default: Python stdlib)")
    s.add_argument("--tokenizer", default=None, help="a tokenizer.json (default: the committed one)")
    s.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help="cap of the default corpus (default: %(default)s)")

    a = p.parse_args(argv)
    if a.cmd == "build":
        tok = "train" if a.train_tokenizer else a.tokenizer
        built = build_dataset(a.source, a.out, a.vocab_size, tok, a.fim_rate, a.val_fraction, a.seed,
                              a.max_bytes, strict=a.strict, rebuild=a.rebuild)
        m = built.manifest
        print(json.dumps({"out_dir": str(built.out_dir), "corpus": m["corpus"],
                          "train_tokens": m["splits"]["train"]["tokens"], "val_tokens": m["splits"]["val"]["tokens"],
                          "vocab_size": m["tokenizer"]["vocab_size"], "tokens_per_byte": m["tokens_per_byte"],
                          "build_seconds": m["build_seconds"]}, indent=2))
    elif a.cmd == "tokenizer":
        t0 = time.perf_counter()
        tok = train_default_tokenizer(a.vocab_size, a.max_bytes)
        tok.save(a.out)
        print(f"{tok} -> {a.out} ({time.perf_counter() - t0:.1f} s, sha256 {tok.sha256()[:16]})")
    else:
        corpus = load_corpus(a.source, a.max_bytes)
        stats = token_stats(load_tokenizer(a.tokenizer), corpus)
        print(json.dumps({"documents": len(corpus), **stats}, indent=2))


if __name__ == "__main__":
    main()
