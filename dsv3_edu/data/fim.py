"""Fill-in-the-Middle (FIM), PSM form, applied to a fraction (0.1) of documents, as in DeepSeek-V3.

A document is cut at two random character positions into prefix / middle / suffix and rearranged as

    <|fim_begin|> prefix <|fim_hole|> suffix <|fim_end|> middle <|eos|>

so the ordinary next-token loss teaches the model to write the middle given both sides
(Prefix-Suffix-Middle order). The report applies it at rate 0.1, at the document level, before packing;
it does not hurt plain left-to-right prediction. The final <|eos|> is the one packing puts after every
document, so ``apply_fim`` returns the text without it.

All functions are pure given ``rng`` (a ``random.Random``): the same seed gives the same splits.
"""
from __future__ import annotations

import random

from .tokenizer import FIM_BEGIN, FIM_END, FIM_HOLE


def check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"FIM rate must be in [0, 1], got {rate}")


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """Cut ``text`` at two uniform random character positions: (prefix, middle, suffix)."""
    i, j = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return text[:i], text[i:j], text[j:]


def maybe_fim_split(text: str, rng: random.Random, rate: float) -> tuple[str, str, str] | None:
    """With probability ``rate``, ``fim_split(text)``; otherwise None (the document stays as is)."""
    check_rate(rate)
    if rng.random() >= rate:  # random() is in [0, 1): rate 0 never fires, rate 1 always does
        return None
    return fim_split(text, rng)


def psm_text(prefix: str, middle: str, suffix: str) -> str:
    """The PSM layout as a string (without the closing <|eos|>, which packing adds)."""
    return f"{FIM_BEGIN}{prefix}{FIM_HOLE}{suffix}{FIM_END}{middle}"


def apply_fim(text: str, rng: random.Random, rate: float = 0.1) -> str:
    """The document, FIM-transformed with probability ``rate`` (PSM form), else unchanged.

    >>> apply_fim("abcdef", random.Random(0), rate=1.0)   # doctest: +SKIP
    '<|fim_begin|>abc<|fim_hole|>ef<|fim_end|>d'
    """
    parts = maybe_fim_split(text, rng, rate)
    return text if parts is None else psm_text(*parts)


def psm_tokens(prefix_ids: list[int], middle_ids: list[int], suffix_ids: list[int], tok) -> list[int]:
    """Token-level PSM: the pieces are encoded separately and the special ids put between them.

    Why not encode ``psm_text(...)``: special tokens are inserted by id, so a document that contains
    the string "<|fim_hole|>" cannot fake one, and no BPE merge spans a cut point.
    """
    return ([tok.fim_begin_id] + prefix_ids + [tok.fim_hole_id] + suffix_ids
            + [tok.fim_end_id] + middle_ids)


def encode_documents(texts: list[str], tok, rng: random.Random, fim_rate: float = 0.0) -> tuple[list[list[int]], int]:
    """Token ids of each document (FIM applied at rate ``fim_rate``), and how many were FIM-transformed.

    One ``rng`` draw decides FIM for each document in order, as ``apply_fim`` does, so
    ``tok.decode(ids)`` of document k equals ``apply_fim(texts[k], rng, fim_rate)`` for the same rng state
    (up to BPE segmentation, which is encoded per piece here).
    No <|eos|> here: packing adds it.
    """
    splits = [maybe_fim_split(t, rng, fim_rate) for t in texts]
    pieces = []  # every string to encode, flattened: plain docs give 1 piece, FIM docs 3
    for t, parts in zip(texts, splits):
        pieces += [t] if parts is None else list(parts)
    ids = iter(tok.encode_batch(pieces))
    out = []
    for parts in splits:
        if parts is None:
            out.append(next(ids))
        else:
            prefix, middle, suffix = next(ids), next(ids), next(ids)
            out.append(psm_tokens(prefix, middle, suffix, tok))
    return out, sum(p is not None for p in splits)
