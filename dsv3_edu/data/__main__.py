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
import math
import sys
import time

from .build import DEFAULT_FIM_RATE, DEFAULT_VAL_FRACTION, build_dataset, load_corpus, train_default_tokenizer
from .corpus import DEFAULT_MAX_BYTES
from .packing import PACKINGS
from .tokenizer import DEFAULT_VOCAB_SIZE, SPECIAL_TOKENS, load_tokenizer, token_stats


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


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _check_args(a) -> None:
    """Refuse bad numbers before anything is read or written (a failed build must not invalidate the cache)."""
    def need(ok, msg):
        if not ok:
            raise ValueError(msg)
    for name in ("fim_rate", "val_fraction"):
        v = getattr(a, name, None)
        need(v is None or math.isfinite(v), f"--{name.replace('_', '-')} must be a finite number, got {v}")
    if a.cmd == "build":
        need(0.0 <= a.fim_rate <= 1.0, f"--fim-rate must be in [0, 1], got {a.fim_rate}")
        need(0.0 <= a.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {a.val_fraction}")
    if getattr(a, "vocab_size", None) is not None:
        need(a.vocab_size >= 256 + len(SPECIAL_TOKENS),
             f"--vocab-size must be >= {256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens), got {a.vocab_size}")
    need(getattr(a, "max_bytes", 1) > 0, f"--max-bytes must be positive, got {getattr(a, 'max_bytes', None)}")
    tok = getattr(a, "tokenizer", None)
    if tok is not None:
        try:
            load_tokenizer(tok)
        except FileNotFoundError:
            raise FileNotFoundError(f"--tokenizer {tok}: no such file") from None
        except Exception as e:  # noqa: BLE001 (the tokenizers library raises a bare Exception on a bad file)
            raise ValueError(f"--tokenizer {tok}: not a tokenizer.json ({e})") from None


def main(argv=None) -> int:
    """The CLI; bad input (a missing path, a bad number, a malformed tokenizer) gives one line and exit 1."""
    p = _Parser(prog="python -m dsv3_edu.data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="build (or reuse) the packed train/val token streams")
    b.add_argument("--source", nargs="+", default=None, help="text files/folders (default: Python stdlib)")
    b.add_argument("--out", default=None, help="output folder (default: <repo>/data/build/vocab<V>)")
    b.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                   help="vocabulary size: the packaged BPE of that size, else one trained once and cached "
                        "(default: %(default)s)")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--train-tokenizer", action="store_true", help="train a new BPE instead of the packaged one")
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

    t = sub.add_parser("tokenizer", help="train a tokenizer with the packaged ones' recipe (dsv3_edu/data/tokenizers/)")
    t.add_argument("--out", required=True, help="where to write the tokenizer.json")
    t.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="vocabulary size (default: %(default)s)")
    t.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help="bytes of the default corpus to train on (default: %(default)s)")

    s = sub.add_parser("stats", help="the built dataset's manifest (default corpus), or tokens per byte of "
                                     "a tokenizer on --source")
    s.add_argument("--source", nargs="+", default=None, help="text files/folders: print tokens per byte only")
    s.add_argument("--tokenizer", default=None, help="a tokenizer.json (default: the packaged one for --vocab-size)")
    s.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="vocabulary size (default: %(default)s)")
    s.add_argument("--out", default=None, help="build folder (default: <repo>/data/build/vocab<V>)")
    s.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help="cap of the default corpus (default: %(default)s)")

    k = sub.add_parser("packing", help="truncated-document share and padding share of each packing")
    k.add_argument("--seq-len", type=int, nargs="+", default=[128, 512],
                   help="window lengths to compare (default: %(default)s)")
    k.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                   help="vocabulary size of the build (default: %(default)s)")
    k.add_argument("--split", default="train", choices=("train", "val"), help="which split (default: %(default)s)")

    a = p.parse_args(argv)
    try:
        _check_args(a)
        _run(a)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _run(a) -> None:
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
    sys.exit(main())
