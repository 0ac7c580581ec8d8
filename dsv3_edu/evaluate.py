"""Measures of a trained model, the way compression and code-model people report them.

- Bits per byte: ``summed next-token loss (nats) / ln 2 / UTF-8 bytes`` of the text scored. Unlike loss per
  token it does not depend on the tokenizer, so it compares across vocab sizes and against general-purpose
  compressors (xz, bz2, zlib bits/byte of the same validation text, kept in the data manifest).
- Python-likeness of samples: the share of complete top-level statements that Python compiles, for
  samples drawn with fixed prompts and seeds, next to the same measure on real held-out code (the ceiling).
- MTP draft acceptance, teacher-forced: how often the MTP module's guess for token t+2 equals the main
  model's own guess at the next position, which is what speculative decoding with the MTP drafter accepts.

What "validation bytes" means: ``evaluate_bits_per_byte`` scores every token of the validation stream
exactly once (``TokenDataset.eval_batches``: documents in order, each first token predicted from the <|eos|>
before it), so its byte count is the UTF-8 size of the validation documents (``dataset.val_bytes``). With
``max_batches`` it scores a prefix, and divides by the bytes of exactly the tokens scored
(``dataset.target_bytes(y)``: byte-level BPE tokens have an exact byte length; <|eos|> counts 0 bytes but its
loss counts, so the figure is if anything pessimistic).
"""
from __future__ import annotations

import codeop
import contextlib
import math
import random
import warnings

import torch
import torch.nn.functional as F

from .data.packing import IGNORE_INDEX

LN2 = math.log(2)


# ---------------------------------------------------------------------------------------------- bits/byte


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Summed next-token loss in nats over some text -> bits per UTF-8 byte of that text."""
    if n_bytes <= 0:
        raise ValueError(f"bits_per_byte: n_bytes must be > 0, got {n_bytes}")
    return total_nats / LN2 / n_bytes


@torch.no_grad()
def evaluate_bits_per_byte(model, dataset, batch_size: int, seq_len: int, device=None,
                           max_batches: int | None = None, split: str = "val",
                           autocast=contextlib.nullcontext) -> dict:
    """Bits per byte of ``model`` on ``split`` of a ``TokenDataset`` from ``BuiltDataset.dataset()``.

    Scores every token of the split once (or the first ``max_batches`` batches) in windows of ``seq_len``.
    ``autocast``: a zero-argument context-manager factory wrapped around each forward (e.g. the trainer's).
    Returns {"bits_per_byte", "loss" (nats per scored token), "nats", "tokens", "bytes"} plus the dataset's
    compressor figures as "xz", "bz2", "zlib" (bits/byte of the whole validation text) when known.
    """
    was_training = model.training
    model.eval()
    nats, tokens, n_bytes = 0.0, 0, 0
    try:
        for k, (x, y) in enumerate(dataset.eval_batches(split, batch_size, seq_len, device=device)):
            if max_batches is not None and k >= max_batches:
                break
            with autocast():
                logits = model(x).logits                                                # (B, T, V)
            nats += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                    reduction="sum").item()
            tokens += int((y != IGNORE_INDEX).sum())
            n_bytes += dataset.target_bytes(y)
    finally:
        model.train(was_training)
    out = {"bits_per_byte": bits_per_byte(nats, n_bytes), "loss": nats / max(tokens, 1), "nats": nats,
           "tokens": tokens, "bytes": n_bytes}
    if split == "val":
        out.update(dataset.compressors)
    return out


def format_bits_per_byte(bpb: float, compressors: dict) -> str:
    """``validation 1.234 bits/byte (xz 1.690, bz2 1.702, zlib 1.940)``: the trainer's summary line."""
    extra = ", ".join(f"{k} {compressors[k]:.3f}" for k in ("xz", "bz2", "zlib") if k in compressors)
    return f"validation {bpb:.3f} bits/byte" + (f" ({extra})" if extra else "")


# ---------------------------------------------------------------------------------------------- MTP


@torch.no_grad()
def mtp_acceptance(model, batches, max_batches: int | None = None) -> dict:
    """Teacher-forced MTP draft acceptance on (x, y) batches of held-out text.

    At each position i the depth-1 MTP module (given the true token t_{i+1}) drafts t_{i+2}; speculative
    decoding accepts the draft when the main model, one position later, predicts the same token. So the
    rate is mean[argmax mtp_logits[:, i] == argmax logits[:, i + 1]] over positions whose target t_{i+2}
    is real text (not IGNORE_INDEX). Also returns how often each guess equals the true t_{i+2}.
    """
    if model.cfg.n_mtp < 1:
        raise ValueError("mtp_acceptance: the model has no MTP module (n_mtp = 0)")
    was_training = model.training
    model.eval()
    agree = mtp_right = main_right = n = 0
    try:
        for k, (x, y) in enumerate(batches):
            if max_batches is not None and k >= max_batches:
                break
            out = model(x, with_mtp=True)
            draft = out.mtp_logits[0].argmax(-1)                                         # (B, T-1): t_{i+2}
            main = out.logits[:, 1:].argmax(-1)                                          # (B, T-1): t_{i+2}
            truth = y[:, 1:]                                                             # (B, T-1)
            keep = truth != IGNORE_INDEX
            agree += int(((draft == main) & keep).sum())
            mtp_right += int(((draft == truth) & keep).sum())
            main_right += int(((main == truth) & keep).sum())
            n += int(keep.sum())
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("mtp_acceptance: no position to score (empty batches or sequences of length 1)")
    return {"acceptance": agree / n, "mtp_accuracy": mtp_right / n, "main_accuracy": main_right / n,
            "positions": n}


# ---------------------------------------------------------------------------------------------- Python-likeness

# Column-0 lines that continue the statement above instead of starting a new one.
_CONTINUES = ("else", "elif", "except", "finally", "case")
DEFAULT_PROMPTS = ("import os\n", "def ", "class ", "for i in range(", "if __name__ == \"__main__\":\n",
                   "from collections import ")


def top_level_statements(text: str) -> list[str]:
    """``text`` cut into top-level blocks: a block starts at a column-0 line that is not blank, not a
    closing bracket, not ``else/elif/except/finally/case`` and not after a decorator; the block runs to the
    next such line. (A column-0 line inside a multi-line string also starts a block: the same rule applies
    to real code, whose score is the ceiling.)"""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        starts = (line[:1].strip() != "" and line[0] not in ")]}#"
                  and line.split(maxsplit=1)[0].rstrip(":") not in _CONTINUES
                  and not (blocks and blocks[-1][-1].startswith("@")))
        if starts or not blocks:
            blocks.append([line])
        else:
            blocks[-1].append(line)
    return ["\n".join(b) + "\n" for b in blocks]


def _status(source: str) -> str:
    """"ok" when ``source`` compiles, "incomplete" when it could still become valid (an open bracket or
    string, a block header without its body), else "error" (``codeop``, as the interactive interpreter)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # e.g. SyntaxWarning for an invalid escape sequence
        try:
            return "incomplete" if codeop.compile_command(source, "<sample>", "exec") is None else "ok"
        except (SyntaxError, ValueError, OverflowError):
            return "error"


def python_likeness(text: str, drop_last: bool = True, skip: int = 0, unique: bool = False) -> dict:
    """Share of the complete top-level statements of ``text`` that Python accepts.

    The text is cut at ``top_level_statements``; a block that is *incomplete* (a column-0 line inside a
    docstring, say) is joined with the next ones until the whole compiles or fails. Each such statement
    counts once, parsed or not. drop_last: the text was cut at a token budget, so its last statement, usually
    unfinished, is left out; a text left with no statement to count then counts as one failed statement
    (a sample must show at least one whole statement: 256 tokens of noise on one line are not Python).
    skip: statements that end within the first ``skip`` characters (the prompt a sample continues) are not
    counted. unique: a statement that repeats an earlier one of the same text (up to surrounding whitespace) is
    not counted again, so a cold sampler's loop of one valid line scores as that one line. Blocks of only
    comments do not count. Returns {"share", "parsed", "statements"}.
    """
    blocks, pos = [], 0
    for b in top_level_statements(text):
        pos += len(b)
        if b.strip() and not b.lstrip().startswith("#"):
            blocks.append((b, pos))
    statuses, buf = [], ""
    for b, end in blocks:
        buf += b
        status = _status(buf)
        if status != "incomplete":
            statuses.append((status, end, buf.strip()))
            buf = ""
    if buf:
        statuses.append(("error", len(text), buf.strip()))     # unfinished at the end of the text
    if drop_last:
        statuses = statuses[:-1]
    statuses = [(st, src) for st, end, src in statuses if end > skip]
    if unique:
        seen: set[str] = set()
        statuses = [(st, src) for st, src in statuses if not (src in seen or seen.add(src))]
    statuses = [st for st, _ in statuses]
    if drop_last and not statuses:
        statuses = ["error"]
    ok = statuses.count("ok")
    return {"share": ok / len(statuses) if statuses else 0.0, "parsed": ok, "statements": len(statuses)}


def _per_text_likeness(texts, drop_last: bool, skips, unique: bool) -> list[dict]:
    texts = list(texts)
    skips = skips if skips is not None else [0] * len(texts)
    return [python_likeness(t, drop_last, k, unique) for t, k in zip(texts, skips)]


def _pool(per: list[dict]) -> dict:
    parsed, statements = sum(r["parsed"] for r in per), sum(r["statements"] for r in per)
    return {"share": parsed / statements if statements else 0.0, "parsed": parsed, "statements": statements}


def pooled_python_likeness(texts, drop_last: bool = True, skips=None, unique: bool = False) -> dict:
    """``python_likeness`` pooled over many texts (statements summed, not shares averaged); ``skips``: each
    text's prompt length in characters (default 0)."""
    return _pool(_per_text_likeness(texts, drop_last, skips, unique))


def python_likeness_interval(texts, skips=None, n: int = 2000, seed: int = 0, unique: bool = False) -> list[float]:
    """95% bootstrap interval ``[low, high]`` of ``pooled_python_likeness``: whole texts are resampled, since the
    statements of one sample are not independent of each other."""
    per = _per_text_likeness(texts, True, skips, unique)
    rng = random.Random(seed)
    shares = sorted(_pool([per[rng.randrange(len(per))] for _ in per])["share"] for _ in range(n))
    return [shares[int(0.025 * n)], shares[int(0.975 * n) - 1]]


def distinct_line_share(texts) -> float:
    """Share of the texts' non-blank lines that are distinct within their text (1.0: no line repeats). A cold
    sampler can score well on ``python_likeness`` by repeating one valid line; this shows it."""
    total = distinct = 0
    for t in texts:
        lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
        total += len(lines)
        distinct += len(set(lines))
    return distinct / total if total else 0.0


def format_python_likeness(samples: dict, heldout: dict) -> str:
    """The trainer's summary line: ``samples: 31% of complete top-level statements compile (11 of 35, 12 samples
    at temperature 0.8); held-out code cut the same way: 99%`` (``samples`` as the command line records it)."""
    return (f"samples: {samples['share']:.0%} of complete top-level statements compile ({samples['parsed']} of "
            f"{samples['statements']}, {samples['n_samples']} samples at temperature {samples['temperature']}); "
            f"held-out code cut the same way: {heldout['share']:.0%}")


def heldout_documents(val_tokens: torch.Tensor, tokenizer, max_tokens: int = 258,
                      max_docs: int | None = None) -> list[str]:
    """The validation documents (the stream's <|eos|>-ended runs) as text, each cut to its first ``max_tokens``
    tokens: real code cut the way a sample is (a short prompt + 256 sampled tokens)."""
    ids = val_tokens.tolist()
    docs, start = [], 0
    for i, t in enumerate(ids):
        if t == tokenizer.eos_id:
            if i > start:
                docs.append(ids[start:i])
            start = i + 1
    docs = docs[:max_docs] if max_docs else docs
    return [tokenizer.decode(d[:max_tokens], skip_special=True) for d in docs]


def heldout_python_likeness(val_tokens: torch.Tensor, tokenizer, max_tokens: int = 258,
                            max_docs: int | None = None) -> dict:
    """The ceiling of ``sample_python_likeness``: the same measure on real held-out code cut the way a sample
    is (``heldout_documents``; the last, usually cut-off statement left out). Returns the pooled dict."""
    return pooled_python_likeness(heldout_documents(val_tokens, tokenizer, max_tokens, max_docs))


@torch.no_grad()
def sample_python_likeness(model, tokenizer, prompts=DEFAULT_PROMPTS, seeds=(0, 1), max_new_tokens: int = 256,
                           temperature: float = 0.8, top_k: int | None = None) -> dict:
    """Sample from ``model`` (``dsv3_edu.generate.generate``) for each prompt and seed, cut each sample at its
    first <|eos|>, and pool ``python_likeness`` over prompt + sample (a statement the prompt completes does not
    count). Returns the pooled dict plus "samples" and their "skips" (each one's prompt length, for re-scoring
    them with ``pooled_python_likeness`` or ``python_likeness_interval``)."""
    from .generate import generate
    if not 0 < temperature <= 0.8:
        raise ValueError(f"sample_python_likeness: temperature must be in (0, 0.8], got {temperature}")
    device = next(model.parameters()).device
    samples, skips = [], []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt)], device=device)
        for seed in seeds:
            out = generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                           eos_id=tokenizer.eos_id)[0].tolist()
            if tokenizer.eos_id in out:
                out = out[:out.index(tokenizer.eos_id)]
            samples.append(tokenizer.decode(out, skip_special=True))
            skips.append(len(prompt))             # a statement the prompt completes is not the model's
    return {**pooled_python_likeness(samples, skips=skips), "samples": samples, "skips": skips}
