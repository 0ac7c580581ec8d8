"""Byte-level BPE, as DeepSeek-V3 uses (128K vocab there, 8192 here), trained with the `tokenizers` library.

Byte-level means the base alphabet is the 256 bytes: every string encodes, nothing is ever "unknown".
BPE then merges the most frequent adjacent pairs until the vocabulary has ``vocab_size`` entries.

Special tokens (each one id, never produced by merges):
  <|eos|>        end of a document; packing puts one after every document
  <|fim_begin|>  <|fim_hole|>  <|fim_end|>   fill-in-the-middle markers (see fim.py)
  <|pad|>        padding, for batched generation

The packaged tokenizers ``dsv3_edu/data/tokenizers/bpe-<vocab>.json`` (vocab 2048, 4096 and 8192; package
data, so a non-editable install has them too) were trained on the train split of the default corpus
(stdlib and test suite of CPython 3.11, seed 0) with
``python -m dsv3_edu.data tokenizer --vocab-size V --out dsv3_edu/data/tokenizers/bpe-V.json``.
Another Python version gives a slightly different corpus, hence a slightly different tokenizer if
retrained; the packaged ones stay valid for any text. Other vocab sizes are trained by the data build
and cached (see ``build.tokenizer_for``).

A checkpoint carries its tokenizer: ``save_tokenizer(tok, ckpt_dir)`` writes ``ckpt_dir/tokenizer.json``
and ``load_tokenizer(ckpt_dir)`` reads it back, so decoding never uses another tokenizer than training did.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .corpus import Document, atomic_write_text

EOS = "<|eos|>"
FIM_BEGIN = "<|fim_begin|>"
FIM_HOLE = "<|fim_hole|>"
FIM_END = "<|fim_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (EOS, FIM_BEGIN, FIM_HOLE, FIM_END, PAD)  # ids 0..4 in a freshly trained tokenizer

DEFAULT_VOCAB_SIZE = 8192
PACKAGED_VOCAB_SIZES = (2048, 4096, 8192)
PACKAGE_TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizers"   # package data
TOKENIZER_FILE = "tokenizer.json"   # the name inside a build folder or a checkpoint folder


def packaged_tokenizer_path(vocab_size: int) -> Path:
    """Where the packaged tokenizer of ``vocab_size`` lives (it exists for PACKAGED_VOCAB_SIZES)."""
    return PACKAGE_TOKENIZER_DIR / f"bpe-{vocab_size}.json"


DEFAULT_TOKENIZER_PATH = packaged_tokenizer_path(DEFAULT_VOCAB_SIZE)


class BPETokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` with the ids of the special tokens at hand.

    ``encode`` treats special-token strings found in the text as plain text by default, so a document
    that happens to contain "<|eos|>" cannot inject a control token; the special ids are inserted
    by the pipeline (``tok.eos_id``...) instead.
    """

    def __init__(self, tk: Tokenizer):
        self.tk = tk
        ids = {}
        for s in SPECIAL_TOKENS:
            i = tk.token_to_id(s)
            if i is None:
                raise ValueError(f"tokenizer has no special token {s!r}; train it with train_tokenizer()")
            ids[s] = i
        self.eos_id, self.pad_id = ids[EOS], ids[PAD]
        self.fim_begin_id, self.fim_hole_id, self.fim_end_id = ids[FIM_BEGIN], ids[FIM_HOLE], ids[FIM_END]
        self.special_ids = ids

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``. With ``allow_special=True``, "<|eos|>" etc. in the text become their ids."""
        self.tk.encode_special_tokens = not allow_special
        return self.tk.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` of many texts at once (runs on all cores inside `tokenizers`)."""
        self.tk.encode_special_tokens = True
        return [e.ids for e in self.tk.encode_batch(texts)]

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of token ids (a list or a 1-D tensor); special tokens are shown unless ``skip_special``."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.tk.decode(ids, skip_special_tokens=skip_special)

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes each id stands for, indexed by id: 0 for special tokens.

        Byte-level BPE stores each byte as one printable character, so a token's byte count is the length
        of its stored string. Summed over the ids of an encoded text it gives the text's UTF-8 byte count
        exactly: what bits per byte divides by when only some tokens are scored.
        """
        special = set(self.special_ids.values())
        return [0 if i in special else len(self.tk.id_to_token(i)) for i in range(self.vocab_size)]

    def id_to_token(self, i: int) -> str:
        return self.tk.id_to_token(i)

    def to_json(self) -> str:
        return self.tk.to_str()

    def sha256(self) -> str:
        """Hash of the serialized tokenizer: identifies it in the dataset manifest."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, path) -> None:
        """Write tokenizer.json (atomically)."""
        atomic_write_text(Path(path), self.to_json())

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def _texts(docs) -> list[str]:
    return [d.text if isinstance(d, Document) else d for d in docs]


def train_tokenizer(docs, vocab_size: int = DEFAULT_VOCAB_SIZE) -> BPETokenizer:
    """Train a byte-level BPE on ``docs`` (strings or Documents) with the special tokens of SPECIAL_TOKENS.

    Deterministic: the same documents and vocab_size give the same tokenizer.json.
    """
    min_size = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"train_tokenizer: vocab_size={vocab_size} is below 256 bytes + "
                         f"{len(SPECIAL_TOKENS)} special tokens = {min_size}")
    texts = _texts(docs)
    if not texts:
        raise ValueError("train_tokenizer: no documents to train on")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2 style split, then bytes
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even unseen ones
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer)
    return BPETokenizer(tk)


def load_tokenizer(path=None) -> BPETokenizer:
    """Load a tokenizer: the packaged default (vocab 8192) when ``path`` is None; a tokenizer.json file;
    or a folder holding ``tokenizer.json`` (a build folder or a checkpoint saved with ``save_tokenizer``)."""
    if path is None:
        path = DEFAULT_TOKENIZER_PATH
        if not path.is_file():
            raise FileNotFoundError(f"load_tokenizer: the packaged tokenizer {str(path)!r} is missing; "
                                    "reinstall dsv3-edu (it ships as package data)")
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"load_tokenizer: no tokenizer file at {str(path)!r}")
    return BPETokenizer(Tokenizer.from_file(str(path)))


def save_tokenizer(tok: BPETokenizer, directory) -> Path:
    """Write ``tok`` as ``directory/tokenizer.json`` (atomically) so that ``load_tokenizer(directory)``
    gives it back; a checkpoint folder carries its tokenizer this way. Returns the file's path."""
    path = Path(directory) / TOKENIZER_FILE
    tok.save(path)
    return path


def token_stats(tok: BPETokenizer, docs) -> dict:
    """Tokens per byte (and bytes per token) of ``tok`` on ``docs``: how well the BPE compresses them."""
    texts = _texts(docs)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    if n_bytes == 0:
        raise ValueError("token_stats: the documents are empty")
    return {"bytes": n_bytes, "tokens": n_tokens, "tokens_per_byte": n_tokens / n_bytes,
            "bytes_per_token": n_bytes / max(n_tokens, 1)}
