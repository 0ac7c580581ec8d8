"""build_dataset: corpus -> split by document -> FIM (train) -> tokens -> packed streams, cached on disk.

    out_dir/
      manifest.json    what was built from what (corpus file count, bytes, sha256, python version,
                       selection rule; tokenizer hash; split sizes; tokens per byte); written last
      tokenizer.json   the tokenizer the ids belong to
      train.pt val.pt  flat token streams (torch uint16 when the vocab fits, else int32)

A second call with the same recipe (same corpus content, tokenizer, fim_rate, split, seed) reuses the
files instead of rebuilding. Every file is written to a temporary name and renamed, and the old
manifest is removed first, so an interrupted build is never mistaken for a finished one.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .corpus import DEFAULT_MAX_BYTES, Corpus, default_corpus, load_documents, write_manifest
from .fim import check_rate, encode_documents
from .packing import TokenDataset, pack_documents, split_documents, storage_dtype
from .tokenizer import (DEFAULT_TOKENIZER_PATH, DEFAULT_VOCAB_SIZE, REPO_ROOT, BPETokenizer,
                        load_tokenizer, train_tokenizer)

FORMAT_VERSION = 1
DEFAULT_VAL_FRACTION = 0.05
DEFAULT_FIM_RATE = 0.1
ENCODE_CHUNK = 64  # documents per encode_batch call (one progress-bar step)


def default_build_dir() -> Path:
    """<repo>/data/build when running from the repository, else ./data/build."""
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "data").is_dir():
        return REPO_ROOT / "data" / "build"
    return Path.cwd() / "data" / "build"


@dataclass
class BuiltDataset:
    """What build_dataset returns: the token streams (int32, 1-D), the tokenizer and the manifest."""
    train: torch.Tensor
    val: torch.Tensor
    tokenizer: BPETokenizer
    manifest: dict
    out_dir: Path

    def dataset(self) -> TokenDataset:
        """The streams wrapped for batching: ``built.dataset().get_batch("train", B, T, g)``."""
        return TokenDataset(self.train, self.val)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


# ---------------------------------------------------------------------------------------------- pieces


def load_corpus(source=None, max_bytes: int = DEFAULT_MAX_BYTES, strict: bool = False) -> Corpus:
    """The default stdlib corpus when ``source`` is None, else ``load_documents(source)``."""
    return default_corpus(max_bytes) if source is None else load_documents(source, strict=strict)


def train_split_tokenizer(corpus: Corpus, vocab_size: int, val_fraction: float, seed: int) -> BPETokenizer:
    """Train a BPE on the train documents only (the validation text stays unseen by every stage)."""
    train_idx, _ = split_documents(len(corpus), val_fraction, seed)
    return train_tokenizer([corpus[i] for i in train_idx], vocab_size)


def train_default_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE, max_bytes: int = DEFAULT_MAX_BYTES,
                            val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0) -> BPETokenizer:
    """The recipe of the committed data/tokenizer.json: train split of the default corpus."""
    return train_split_tokenizer(default_corpus(max_bytes), vocab_size, val_fraction, seed)


def resolve_tokenizer(tokenizer, vocab_size: int) -> BPETokenizer | None:
    """The tokenizer to use, or None when one must be trained.

    tokenizer: a BPETokenizer; a path to a tokenizer.json; "train" (always train); or None: the
    committed tokenizer when its vocab size equals ``vocab_size``, else train. ``vocab_size`` is used
    only when training.
    """
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer
    if tokenizer == "train":
        return None
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if DEFAULT_TOKENIZER_PATH.is_file():
        tok = load_tokenizer(DEFAULT_TOKENIZER_PATH)
        if tok.vocab_size == vocab_size:
            return tok
    return None


def _atomic_torch_save(t: torch.Tensor, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(t, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _load_built(out_dir: Path, manifest: dict) -> BuiltDataset | None:
    """The cached dataset when every file is there and the token counts agree, else None."""
    try:
        tok = load_tokenizer(out_dir / "tokenizer.json")
        streams = {s: torch.load(out_dir / f"{s}.pt", weights_only=True).to(torch.int32) for s in ("train", "val")}
    except Exception:  # a missing or unreadable file means: rebuild
        return None
    if tok.sha256() != manifest["tokenizer"]["sha256"]:
        return None
    if any(len(streams[s]) != manifest["splits"][s]["tokens"] for s in streams):
        return None
    return BuiltDataset(streams["train"], streams["val"], tok, manifest, out_dir)


# ---------------------------------------------------------------------------------------------- build


def build_dataset(source=None, out_dir=None, vocab_size: int = DEFAULT_VOCAB_SIZE, tokenizer=None,
                  fim_rate: float = DEFAULT_FIM_RATE, val_fraction: float = DEFAULT_VAL_FRACTION,
                  seed: int = 0, max_bytes: int = DEFAULT_MAX_BYTES, strict: bool = False,
                  rebuild: bool = False, progress: bool = True) -> BuiltDataset:
    """Build (or reuse) the packed train/val token streams.

    source: None for the default stdlib corpus (capped at ``max_bytes``), or a path / list of paths
        to text files or folders (``max_bytes`` then unused).
    out_dir: where the files go (default: <repo>/data/build).
    tokenizer: None (committed data/tokenizer.json if its vocab is ``vocab_size``, else train one),
        "train" (train a new BPE of ``vocab_size`` on the train documents), a path, or a BPETokenizer.
    fim_rate: fraction of *train* documents FIM-transformed (PSM). Validation stays plain text,
        so validation loss compares across FIM settings.
    val_fraction, seed: the split by document (and the FIM draws, seeded from ``seed``).
    strict: for ``source`` folders, raise on a binary/non-UTF-8 file instead of skipping it.
    rebuild: ignore a matching cache.
    """
    check_rate(fim_rate)
    out_dir = Path(out_dir) if out_dir is not None else default_build_dir()
    t0 = time.perf_counter()
    corpus = load_corpus(source, max_bytes, strict)
    tok = resolve_tokenizer(tokenizer, vocab_size)
    recipe = {
        "format": FORMAT_VERSION,
        "corpus_sha256": corpus.sha256(),
        "tokenizer": tok.sha256() if tok is not None else f"train(vocab_size={vocab_size})",
        "fim_rate": fim_rate,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    old = _read_manifest(out_dir)
    if not rebuild and old is not None and old.get("recipe") == recipe:
        built = _load_built(out_dir, old)
        if built is not None:
            return built

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # from here on the old build is invalid
    train_idx, val_idx = split_documents(len(corpus), val_fraction, seed)
    if tok is None:
        if progress:
            print(f"build_dataset: training a byte-level BPE, vocab {vocab_size}, on {len(train_idx)} documents")
        tok = train_tokenizer([corpus[i] for i in train_idx], vocab_size)

    rng = random.Random(seed)  # FIM draws
    splits, streams = {}, {}
    bar = tqdm(total=len(corpus), desc="tokenizing", unit="doc", disable=not progress)
    for split, idx, rate in (("train", train_idx, fim_rate), ("val", val_idx, 0.0)):
        token_lists, n_fim = [], 0
        for k in range(0, len(idx), ENCODE_CHUNK):
            texts = [corpus[i].text for i in idx[k:k + ENCODE_CHUNK]]
            ids, n = encode_documents(texts, tok, rng, rate)
            token_lists += ids
            n_fim += n
            bar.update(len(texts))
        streams[split] = pack_documents(token_lists, tok.eos_id)                          # (N_split,)
        splits[split] = {"documents": len(idx), "fim_documents": n_fim, "tokens": len(streams[split]),
                         "bytes": sum(len(corpus[i].text.encode("utf-8")) for i in idx),
                         "file": f"{split}.pt", "names": [corpus[i].name for i in idx]}
    bar.close()

    dtype = storage_dtype(tok.vocab_size)
    tok.save(out_dir / "tokenizer.json")
    for split, t in streams.items():
        _atomic_torch_save(t.to(dtype), out_dir / f"{split}.pt")
    n_bytes = splits["train"]["bytes"] + splits["val"]["bytes"]
    # text tokens only: without the <eos> of every document and the 3 markers of every FIM document
    n_text = sum(splits[s]["tokens"] - splits[s]["documents"] - 3 * splits[s]["fim_documents"] for s in splits)
    manifest = {
        "recipe": recipe,
        "corpus": corpus.manifest(),
        "tokenizer": {"file": "tokenizer.json", "vocab_size": tok.vocab_size, "sha256": tok.sha256(),
                      "special_ids": tok.special_ids},
        "splits": splits,
        "dtype": str(dtype).removeprefix("torch."),
        "tokens_per_byte": n_text / n_bytes,
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    write_manifest(out_dir / "manifest.json", manifest)
    if progress:
        print(f"build_dataset: {len(corpus)} documents, {n_bytes / 1e6:.1f} MB -> "
              f"{splits['train']['tokens']:,} train + {splits['val']['tokens']:,} val tokens "
              f"in {manifest['build_seconds']} s -> {out_dir}")
    return BuiltDataset(streams["train"], streams["val"], tok, manifest, out_dir)
