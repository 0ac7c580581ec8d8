"""Document packing, the train/validation split, and batches of (x, y) for next-token prediction.

Documents are stored as one long token stream with <|eos|> after each. Two ways to cut training
windows of ``seq_len + 1`` tokens from it:

- concatenate-and-chunk (``packing="concat"``, the simple baseline): windows are cut wherever they fall,
  so most documents are split across windows (the model then sees a document's end without its start).
  Nothing is padded.
- best-fit packing (``packing="bestfit"``), what DeepSeek-V3's report cites (Ding et al. 2024, "Fewer
  Truncations Improve Language Modeling"): a document longer than a window is split into window-sized
  chunks; the chunks are packed into windows by Best-Fit-Decreasing (longest first, each into the
  fullest window it still fits in); no document is cut unless it is longer than a window. The rest of
  each window is padding, whose targets are IGNORE_INDEX so they do not count in the loss.

Either way, no attention mask stops a window from seeing the previous document in the same window
(the report: no cross-sample attention mask): the model learns that <|eos|> starts afresh.

The split is by document: a document is wholly in train or wholly in validation, so validation
loss measures text the model never saw.
"""
from __future__ import annotations

import random

import torch

# Target id that the loss skips: F.cross_entropy(..., ignore_index=IGNORE_INDEX), as the model's loss uses
# (dsv3_edu.model.transformer.IGNORE_INDEX; a test checks they agree). Padding targets carry it.
IGNORE_INDEX = -1


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


# ---------------------------------------------------------------------------------------------- best-fit


def document_spans(tokens: torch.Tensor, eos_id: int) -> list[tuple[int, int]]:
    """(start, end) of every document in a packed stream, each span ending after its <|eos|>.

    Tokens after the last <|eos|> (none in a built stream) form a last span of their own.
    """
    ends = (torch.nonzero(tokens == eos_id).flatten() + 1).tolist()
    if not ends or ends[-1] != len(tokens):
        ends.append(len(tokens))
    starts = [0] + ends[:-1]
    return [(a, b) for a, b in zip(starts, ends) if b > a]


def chunk_document(start: int, end: int, seq_len: int) -> list[tuple[int, int]]:
    """A document's (start, end) cut into chunks of at most ``seq_len + 1`` tokens (one window).

    Consecutive chunks overlap by one token (chunk k covers [start + k*T, start + k*T + T + 1)), so every
    token after the first is a target exactly once, as in the stream. A document that fits is one chunk.
    """
    T, out = seq_len, []
    k = start
    while True:
        out.append((k, min(k + T + 1, end)))
        if k + T + 1 >= end:
            return out
        k += T


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item indices) packing items of ``lengths`` into bins of ``capacity``, Best-Fit-Decreasing.

    Items are taken longest first (ties: lower index first); each goes into the open bin with the least
    room that still fits it, else opens a new bin. Deterministic. Every length must be in [1, capacity].
    """
    if any(not 1 <= n <= capacity for n in lengths):
        raise ValueError(f"best_fit_decreasing: every length must be in [1, {capacity}]")
    bins: list[list[int]] = []
    by_room: list[list[int]] = [[] for _ in range(capacity + 1)]   # room left -> bins with that room
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        room = next((r for r in range(n, capacity + 1) if by_room[r]), None)
        if room is None:
            bins.append([i])
            b, room = len(bins) - 1, capacity
        else:
            b = by_room[room].pop()
            bins[b].append(i)
        by_room[room - n].append(b)
    return bins


def pack_best_fit(tokens: torch.Tensor, seq_len: int, eos_id: int, pad_id: int) -> torch.Tensor:
    """Best-fit packing of a stream's documents into windows: (n_windows, seq_len + 1), pad_id in the padding.

    Row order: windows in the order best_fit_decreasing opens them (batches draw rows at random anyway).
    """
    C = seq_len + 1
    chunks = [c for a, b in document_spans(tokens, eos_id) for c in chunk_document(a, b, seq_len)]
    rows = torch.full((0, C), pad_id, dtype=tokens.dtype)
    if not chunks:
        return rows
    bins = best_fit_decreasing([b - a for a, b in chunks], C)
    rows = torch.full((len(bins), C), pad_id, dtype=tokens.dtype)                           # (N, T+1)
    for r, items in enumerate(bins):
        col = 0
        for i in items:
            a, b = chunks[i]
            rows[r, col:col + b - a] = tokens[a:b]
            col += b - a
    return rows


def packing_stats(tokens: torch.Tensor, seq_len: int, eos_id: int, packing: str = "bestfit") -> dict:
    """How a packing treats the documents of a stream, for windows of ``seq_len + 1`` tokens.

    truncated_share: documents cut across windows / documents. For "concat" the windows are the stream's
    consecutive windows (stride seq_len, as SequentialBatches cuts them): a document is cut when it
    crosses a window boundary. For "bestfit" a document is cut only when it is longer than a window.
    padding_share: padding tokens / all window tokens (0 for "concat").
    """
    check_packing(packing)
    spans = document_spans(tokens, eos_id)
    T, C = seq_len, seq_len + 1
    if packing == "concat":
        # window k holds stream positions [k*T, k*T + T]; a document [a, b) is whole in the first window it
        # starts in when its last token b - 1 is still in that window
        cut = sum(b - 1 > (a // T) * T + T for a, b in spans)
        n_windows, pad, total = max(1, -(-(len(tokens) - 1) // T)), 0, len(tokens)
    else:
        cut = sum(b - a > C for a, b in spans)
        chunks = [b - a for s in spans for a, b in chunk_document(*s, seq_len)]
        n_windows = len(best_fit_decreasing(chunks, C))
        total = n_windows * C
        pad = total - sum(chunks)
    return {"packing": packing, "documents": len(spans), "truncated_documents": cut,
            "truncated_share": cut / max(len(spans), 1), "windows": n_windows,
            "padding_tokens": pad, "padding_share": pad / max(total, 1)}


PACKINGS = ("concat", "bestfit")


def check_packing(packing: str) -> None:
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")


def rows_to_xy(rows: torch.Tensor, pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) packed windows -> x (B, T) and y (B, T) int64, y = IGNORE_INDEX where the target is padding."""
    x, y = windows_to_xy(rows, None)
    y = y.masked_fill(y == pad_id, IGNORE_INDEX)
    if device is not None and torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


class PackedBatches:
    """Endless random batches of best-fit packed windows, from a seeded generator, resumable exactly.

    Each batch draws ``batch_size`` rows of ``pack_best_fit`` at random (with replacement, like get_batch's
    random offsets); targets at padding are IGNORE_INDEX. ``state_dict()`` holds the generator state.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, eos_id: int, pad_id: int,
                 seed: int = 0, device=None):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"PackedBatches: batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        self.rows = pack_best_fit(tokens, seq_len, eos_id, pad_id)                           # (N, T+1)
        if len(self.rows) == 0:
            raise ValueError("PackedBatches: the split holds no document")
        self.batch_size, self.seq_len, self.pad_id, self.device = batch_size, seq_len, pad_id, device
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.rows), (self.batch_size,), generator=self.generator)   # (B,)
        return rows_to_xy(self.rows[idx], self.pad_id, self.device)

    def state_dict(self) -> dict:
        return {"rng_state": self.generator.get_state(), "n_rows": len(self.rows), "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        for k, mine in (("seq_len", self.seq_len), ("n_rows", len(self.rows))):
            if k in state and state[k] != mine:
                raise ValueError(f"PackedBatches.load_state_dict: saved {k}={state[k]} but this iterator has {mine}")
        self.generator.set_state(state["rng_state"])


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
                raise ValueError(f"SequentialBatches.load_state_dict: saved {k}={state[k]} "
                                 f"but this iterator has {mine}")
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


class EvalBatches:
    """Every token of a split scored exactly once, in order: for bits per byte over whole documents.

    Targets are the split's stream; inputs are the same stream shifted right by one with <|eos|> in front
    (so each document's first token is predicted from the <|eos|> before it, as in training). Both are cut
    into windows of ``seq_len`` (the last one padded: input pad_id, target IGNORE_INDEX) and grouped
    ``batch_size`` windows per batch (the last batch may have fewer). Deterministic; finite (one pass).

    Lazy: each batch is cut from the stream when it is drawn, so the trainer's first ``eval_batches`` batches
    cost those batches only, however large the split (a whole-split copy per evaluation would not).
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, eos_id: int, pad_id: int, device=None):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"EvalBatches: batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if len(tokens) == 0:
            raise ValueError("EvalBatches: the split holds no token")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.eos_id, self.pad_id, self.device = eos_id, pad_id, device
        self.n_windows = -(-len(tokens) // seq_len)

    def __len__(self) -> int:
        return -(-self.n_windows // self.batch_size)

    def __iter__(self):
        n, T = len(self.tokens), self.seq_len
        for w in range(0, self.n_windows, self.batch_size):
            rows = min(self.batch_size, self.n_windows - w)
            a, b = w * T, min((w + rows) * T, n)                  # the stream positions these windows target
            y = torch.full((rows * T,), IGNORE_INDEX, dtype=torch.long)
            x = torch.full((rows * T,), self.pad_id, dtype=torch.long)
            y[:b - a] = self.tokens[a:b].long()
            if a == 0:                                            # the stream's first token follows an <|eos|>
                x[0] = self.eos_id
                x[1:b] = self.tokens[:b - 1].long()
            else:
                x[:b - a] = self.tokens[a - 1:b - 1].long()
            yield x.view(rows, T).to(self.device), y.view(rows, T).to(self.device)              # (rows, T)


class TokenDataset:
    """The packed train/val token streams, and batches from them.

    >>> ds = TokenDataset(train_tokens, val_tokens)
    >>> x, y = ds.get_batch("train", batch_size=8, seq_len=128, generator=g)   # (8, 128) each
    >>> it = ds.sequential("val", batch_size=8, seq_len=128)                    # in order, resumable
    >>> it = ds.random("train", 8, 128, seed=0, packing="bestfit")              # best-fit packed windows

    A dataset from ``BuiltDataset.dataset()`` also carries what bits per byte needs: ``token_bytes``
    ((V,) int64, UTF-8 bytes per id, 0 for special tokens), ``val_bytes`` (UTF-8 bytes of the validation
    documents) and ``compressors`` (their bits/byte under xz, bz2 and zlib).
    """

    def __init__(self, train: torch.Tensor, val: torch.Tensor, token_bytes=None, val_bytes: int | None = None,
                 compressors: dict | None = None, eos_id: int | None = None, pad_id: int | None = None):
        self.splits = {"train": train, "val": val}
        self.token_bytes = torch.as_tensor(token_bytes, dtype=torch.long) if token_bytes is not None else None
        self.val_bytes = val_bytes
        self.compressors = dict(compressors or {})
        self.eos_id, self.pad_id = eos_id, pad_id

    def __getitem__(self, split: str) -> torch.Tensor:
        if split not in self.splits:
            raise ValueError(f"TokenDataset: unknown split {split!r}; use 'train' or 'val'")
        return self.splits[split]

    def _special(self, what: str) -> tuple[int, int]:
        if self.eos_id is None or self.pad_id is None:
            raise ValueError(f"TokenDataset: {what} needs eos_id and pad_id (use BuiltDataset.dataset())")
        return self.eos_id, self.pad_id

    def get_batch(self, split: str, batch_size: int, seq_len: int,
                  generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows from ``split``: (x, y), each (B, T) int64; see ``get_batch``."""
        return get_batch(self[split], batch_size, seq_len, generator, device)

    def sequential(self, split: str, batch_size: int, seq_len: int, device=None) -> SequentialBatches:
        """An in-order, resumable batch iterator over ``split`` (e.g. for a full validation pass)."""
        return SequentialBatches(self[split], batch_size, seq_len, device)

    def random(self, split: str, batch_size: int, seq_len: int, seed: int = 0, device=None,
               packing: str = "concat") -> RandomBatches | PackedBatches:
        """An endless, seeded, resumable random batch iterator over ``split``.

        packing: "concat" (random windows of the stream) or "bestfit" (random best-fit packed windows;
        targets at padding are IGNORE_INDEX, which the model's loss skips).
        """
        check_packing(packing)
        if packing == "bestfit":
            eos, pad = self._special("best-fit packing")
            return PackedBatches(self[split], batch_size, seq_len, eos, pad, seed, device)
        return RandomBatches(self[split], batch_size, seq_len, seed, device)

    def packing_stats(self, split: str, seq_len: int, packing: str = "bestfit") -> dict:
        """Truncated-document share and padding share of ``packing`` on ``split``; see ``packing_stats``."""
        eos, _ = self._special("packing_stats")
        return packing_stats(self[split], seq_len, eos, packing)

    def eval_batches(self, split: str, batch_size: int, seq_len: int, device=None) -> EvalBatches:
        """One in-order pass scoring every token of ``split`` exactly once (see EvalBatches)."""
        eos, pad = self._special("eval_batches")
        return EvalBatches(self[split], batch_size, seq_len, eos, pad, device)

    def target_bytes(self, y: torch.Tensor) -> int:
        """UTF-8 bytes of the targets ``y`` (IGNORE_INDEX and special tokens count 0): what bits per byte
        divides by when the loss summed exactly these targets."""
        if self.token_bytes is None:
            raise ValueError("TokenDataset: target_bytes needs token_bytes (use BuiltDataset.dataset())")
        y = y.detach().flatten().cpu()
        return int(self.token_bytes[y[y != IGNORE_INDEX]].sum())
