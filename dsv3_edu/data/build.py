"""build_dataset: corpus -> split by document -> FIM (train) -> tokens -> packed streams, cached on disk.

    out_dir/
      manifest.json    what was built from what (corpus file count, bytes, sha256, python version,
                       selection rule and dropped files; tokenizer hash; split sizes; tokens per byte;
                       compressor bits/byte of the validation text); written last
      tokenizer.json   the tokenizer the ids belong to
      train.pt val.pt  flat token streams (torch uint16 when the vocab fits, else int32)

A second call with the same recipe (same corpus content, tokenizer, fim_rate, split, seed) reuses the
files instead of rebuilding. Every file is written to a temporary name and renamed, and the old
manifest is removed first, so an interrupted build is never mistaken for a finished one.
"""
from __future__ import annotations

import bz2
import json
import lzma
import random
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .corpus import DEFAULT_MAX_BYTES, Corpus, atomic_write, default_corpus, load_documents, write_manifest
from .fim import check_rate, encode_documents
from .packing import TokenDataset, pack_documents, split_documents, storage_dtype
from .tokenizer import (
    DEFAULT_VOCAB_SIZE,
    TOKENIZER_FILE,
    BPETokenizer,
    load_tokenizer,
    packaged_tokenizer_path,
    train_tokenizer,
)

FORMAT_VERSION = 2
# <repo>, found from this file: <repo>/dsv3_edu/data/build.py
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VAL_FRACTION = 0.05
DEFAULT_FIM_RATE = 0.1
ENCODE_CHUNK = 64  # documents per encode_batch call (one progress-bar step)


def default_build_dir() -> Path:
    """<repo>/data/build when running from the repository, else ./data/build."""
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "dsv3_edu").is_dir():
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
        """The streams wrapped for batching: ``built.dataset().get_batch("train", B, T, g)``.

        The dataset also knows what bits per byte needs: ``token_bytes`` (bytes per id), ``val_bytes``
        (UTF-8 bytes of the validation documents) and ``compressors`` (their bits/byte under xz, bz2, zlib).
        """
        return TokenDataset(self.train, self.val, token_bytes=self.tokenizer.token_bytes(),
                            val_bytes=self.manifest["splits"]["val"]["bytes"],
                            compressors=self.manifest.get("compressors", {}), eos_id=self.tokenizer.eos_id,
                            pad_id=self.tokenizer.pad_id)

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
    """The recipe of the packaged tokenizers (dsv3_edu/data/tokenizers/): train split of the default corpus."""
    return train_split_tokenizer(default_corpus(max_bytes), vocab_size, val_fraction, seed)


def tokenizer_cache_path(cache_dir: Path, vocab_size: int, corpus: Corpus, val_fraction: float, seed: int) -> Path:
    """Cache file of a tokenizer trained by the build: one per vocab size, corpus and split."""
    return Path(cache_dir) / f"bpe-{vocab_size}-{corpus.sha256()[:12]}-v{val_fraction}-s{seed}.json"


def tokenizer_for(vocab_size: int, corpus: Corpus, val_fraction: float, seed: int, cache_dir,
                  progress: bool = True) -> BPETokenizer:
    """The tokenizer of ``vocab_size``: the packaged one if there is one (2048, 4096, 8192), else one
    trained on the train split of ``corpus`` and cached under ``cache_dir`` (trained once per vocab size)."""
    packaged = packaged_tokenizer_path(vocab_size)
    if packaged.is_file():
        return load_tokenizer(packaged)
    cached = tokenizer_cache_path(cache_dir, vocab_size, corpus, val_fraction, seed)
    if cached.is_file():
        return load_tokenizer(cached)
    if progress:
        print(f"build_dataset: training a byte-level BPE, vocab {vocab_size} (cached as {cached})")
    tok = train_split_tokenizer(corpus, vocab_size, val_fraction, seed)
    tok.save(cached)
    return tok


def resolve_tokenizer(tokenizer) -> BPETokenizer | None:
    """The tokenizer given, or None when the build picks one by vocab size (``tokenizer_for``).

    tokenizer: a BPETokenizer; a path to a tokenizer.json or a folder holding one; "train" (always
    train, never the packaged one); or None (packaged or cached by vocab size).
    """
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer
    if tokenizer is None or tokenizer == "train":
        return None
    return load_tokenizer(tokenizer)


def compressor_bits_per_byte(text: str) -> dict:
    """Bits per byte of ``text`` (UTF-8) under three general-purpose compressors: the baselines a language
    model of the same text should beat. xz = lzma preset 9 | PRESET_EXTREME (``xz -9e``), bz2 level 9,
    zlib level 9; each is 8 * compressed size / input size."""
    raw = text.encode("utf-8")
    if not raw:
        raise ValueError("compressor_bits_per_byte: empty text")
    sizes = {"xz": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
             "bz2": len(bz2.compress(raw, compresslevel=9)),
             "zlib": len(zlib.compress(raw, level=9))}
    return {k: 8 * v / len(raw) for k, v in sizes.items()}


def _atomic_torch_save(t: torch.Tensor, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(t, tmp))


def _read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _load_built(out_dir: Path, manifest: dict) -> BuiltDataset | None:
    """The cached dataset when every file is there and the token counts agree, else None."""
    try:
        tok = load_tokenizer(out_dir / TOKENIZER_FILE)
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
    out_dir: where the files go (default: <repo>/data/build/vocab<V>, one folder per vocab size, so a
        sweep over vocab sizes builds each once; trained tokenizers are cached in <repo>/data/build/tokenizers).
    vocab_size: the tokenizer's vocabulary when the build picks it (``tokenizer`` None or "train").
    tokenizer: None (the packaged tokenizer of ``vocab_size`` if there is one, else one trained on the train
        documents and cached per vocab size in ``tokenizers/`` next to ``out_dir``), "train" (train a new BPE of
        ``vocab_size`` on the train documents), a path (file or folder), or a BPETokenizer.
    fim_rate: fraction of *train* documents FIM-transformed (PSM). Validation stays plain text,
        so validation loss compares across FIM settings.
    val_fraction, seed: the split by document (and the FIM draws, seeded from ``seed``).
    strict: for ``source`` folders, raise on a binary/non-UTF-8 file instead of skipping it.
    rebuild: ignore a matching cache.
    """
    check_rate(fim_rate)
    t0 = time.perf_counter()
    corpus = load_corpus(source, max_bytes, strict)
    tok = resolve_tokenizer(tokenizer)
    if tok is None and tokenizer is None:
        cache = (Path(out_dir).parent if out_dir is not None else default_build_dir()) / "tokenizers"
        tok = tokenizer_for(vocab_size, corpus, val_fraction, seed, cache, progress)
    if out_dir is None:
        out_dir = default_build_dir() / f"vocab{tok.vocab_size if tok is not None else vocab_size}"
    out_dir = Path(out_dir)
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
    tok.save(out_dir / TOKENIZER_FILE)
    if progress:
        print("build_dataset: compressing the validation text with xz, bz2 and zlib (baselines)")
    compressors = compressor_bits_per_byte("".join(corpus[i].text for i in val_idx))
    for split, t in streams.items():
        _atomic_torch_save(t.to(dtype), out_dir / f"{split}.pt")
    n_bytes = splits["train"]["bytes"] + splits["val"]["bytes"]
    # text tokens only: without the <eos> of every document and the 3 markers of every FIM document
    n_text = sum(splits[s]["tokens"] - splits[s]["documents"] - 3 * splits[s]["fim_documents"] for s in splits)
    manifest = {
        "recipe": recipe,
        "corpus": corpus.manifest(),
        "tokenizer": {"file": TOKENIZER_FILE, "vocab_size": tok.vocab_size, "sha256": tok.sha256(),
                      "special_ids": tok.special_ids},
        "splits": splits,
        "dtype": str(dtype).removeprefix("torch."),
        "tokens_per_byte": n_text / n_bytes,
        # bits per byte of the validation text (its documents concatenated in order) under each compressor
        "compressors": {k: round(v, 4) for k, v in compressors.items()},
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    write_manifest(out_dir / "manifest.json", manifest)
    if progress:
        print(f"build_dataset: {len(corpus)} documents, {n_bytes / 1e6:.1f} MB -> "
              f"{splits['train']['tokens']:,} train + {splits['val']['tokens']:,} val tokens "
              f"in {manifest['build_seconds']} s -> {out_dir}")
    return BuiltDataset(streams["train"], streams["val"], tok, manifest, out_dir)
