"""Document packing, the train/validation split, and batches of (x, y) for next-token prediction.

Packing (as DeepSeek-V3): documents are concatenated into one long token stream with <|eos|> after
each, and training windows are cut from the stream wherever they fall. No attention mask stops a
window from seeing the end of the previous document: the model learns that <|eos|> starts afresh.
Nothing is padded, nothing is dropped.

The split is by document: a document is wholly in train or wholly in validation, so validation
loss measures text the model never saw.
"""
from __future__ import annotations

import random

import torch


def split_documents(n_docs: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of document indices 0..n_docs-1 into (train, val), each sorted.

    At least one document goes to each side when ``val_fraction > 0``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split_documents: val_fraction must be in [0, 1), got {val_fraction}")
    n_val = 0 if val_fraction == 0 else max(1, round(n_docs * val_fraction))
    if n_val and n_docs < 2:
        raise ValueError(f"split_documents: need >= 2 documents for a validation split, got {n_docs}")
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    return sorted(order[n_val:]), sorted(order[:n_val])


def pack_documents(token_lists: list[list[int]], eos_id: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """One flat stream: doc_0 <eos> doc_1 <eos> ... doc_n <eos>, shape (sum(len) + n_docs,)."""
    flat = []
    for ids in token_lists:
        flat += ids
        flat.append(eos_id)
    return torch.tensor(flat, dtype=dtype)


def storage_dtype(vocab_size: int) -> torch.dtype:
    """uint16 halves the file size when every id fits in it (vocab <= 65536), else int32."""
    return torch.uint16 if vocab_size <= 2**16 else torch.int32


# ---------------------------------------------------------------------------------------------- batches


def _check_fits(n_tokens: int, n_needed: int, what: str) -> None:
    if n_needed > n_tokens:
        raise ValueError(f"{what} needs {n_needed} tokens but the split has only {n_tokens}; "
                         f"use a smaller seq_len/batch_size or a bigger corpus")


def windows_to_xy(chunk: torch.Tensor, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) token windows -> inputs x = chunk[:, :-1] and targets y = chunk[:, 1:], both (B, T) int64."""
    chunk = chunk.to(torch.long)
    x, y = chunk[:, :-1], chunk[:, 1:]
    if device is not None and torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def get_batch(tokens: torch.Tensor, batch_size: int, seq_len: int,
              generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` windows of ``seq_len + 1`` tokens at random offsets of the stream (nanoGPT style).

    Returns (x, y), each (B, T) int64 on ``device``, with y[:, t] = x[:, t + 1] shifted: y is the
    token that follows x. For exact resume, save ``generator.get_state()``.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"get_batch: batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    _check_fits(len(tokens), seq_len + 1, f"get_batch with seq_len={seq_len}")
    starts = torch.randint(0, len(tokens) - seq_len, (batch_size,), generator=generator)   # (B,)
    idx = starts[:, None] + torch.arange(seq_len + 1)                                         # (B, T+1)
    return windows_to_xy(tokens[idx], device)


class SequentialBatches:
    """Walks a token stream in order, ``batch_size`` consecutive windows of ``seq_len`` per batch.

    Deterministic, and resumable exactly: ``state_dict()`` holds the cursor (and epoch), and
    ``load_state_dict`` puts a fresh iterator at the same place, so the next batches are identical.
    Each batch reads B*T + 1 tokens from the cursor; the cursor then moves by B*T so every token is
    a target exactly once per epoch. When fewer than B*T + 1 tokens remain, the epoch ends and the
    walk starts again at 0 (the tail, < B*T tokens, is skipped that epoch).
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, device=None):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"SequentialBatches: batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        _check_fits(len(tokens), batch_size * seq_len + 1,
                    f"a sequential batch of batch_size={batch_size} x seq_len={seq_len}")
        self.tokens, self.batch_size, self.seq_len, self.device = tokens, batch_size, seq_len, device
        self.cursor, self.epoch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return (len(self.tokens) - 1) // (self.batch_size * self.seq_len)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = self.batch_size, self.seq_len
        if self.cursor + B * T + 1 > len(self.tokens):
            self.cursor, self.epoch = 0, self.epoch + 1
        flat = self.tokens[self.cursor: self.cursor + B * T + 1]                               # (B*T+1,)
        idx = torch.arange(B)[:, None] * T + torch.arange(T + 1)                               # (B, T+1)
        self.cursor += B * T
        return windows_to_xy(flat[idx], self.device)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "epoch": self.epoch, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "n_tokens": len(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        for k in ("batch_size", "seq_len", "n_tokens"):
            mine = len(self.tokens) if k == "n_tokens" else getattr(self, k)
            if state[k] != mine:
                raise ValueError(f"SequentialBatches.load_state_dict: saved {k}={state[k]} but this iterator has {mine}")
        self.cursor, self.epoch = state["cursor"], state["epoch"]


class RandomBatches:
    """Endless random-offset batches (``get_batch``) from a seeded generator, resumable exactly.

    ``state_dict()`` holds the generator state, so a restored iterator draws the same next batches.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0, device=None):
        _check_fits(len(tokens), seq_len + 1, f"RandomBatches with seq_len={seq_len}")
        self.tokens, self.batch_size, self.seq_len, self.device = tokens, batch_size, seq_len, device
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return get_batch(self.tokens, self.batch_size, self.seq_len, self.generator, self.device)

    def state_dict(self) -> dict:
        return {"rng_state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng_state"])


class TokenDataset:
    """The packed train/val token streams, and batches from them.

    >>> ds = TokenDataset(train_tokens, val_tokens)
    >>> x, y = ds.get_batch("train", batch_size=8, seq_len=128, generator=g)   # (8, 128) each
    >>> it = ds.sequential("val", batch_size=8, seq_len=128)                    # in order, resumable
    """

    def __init__(self, train: torch.Tensor, val: torch.Tensor):
        self.splits = {"train": train, "val": val}

    def __getitem__(self, split: str) -> torch.Tensor:
        if split not in self.splits:
            raise ValueError(f"TokenDataset: unknown split {split!r}; use 'train' or 'val'")
        return self.splits[split]

    def get_batch(self, split: str, batch_size: int, seq_len: int,
                  generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows from ``split``: (x, y), each (B, T) int64; see ``get_batch``."""
        return get_batch(self[split], batch_size, seq_len, generator, device)

    def sequential(self, split: str, batch_size: int, seq_len: int, device=None) -> SequentialBatches:
        """An in-order, resumable batch iterator over ``split`` (e.g. for a full validation pass)."""
        return SequentialBatches(self[split], batch_size, seq_len, device)

    def random(self, split: str, batch_size: int, seq_len: int, seed: int = 0, device=None) -> RandomBatches:
        """An endless, seeded, resumable random-window batch iterator over ``split``."""
        return RandomBatches(self[split], batch_size, seq_len, seed, device)
