"""Decoding: sampling with a KV cache (absorbed MLA by default), FIM infilling, and speculative decoding
with the MTP module as the drafter.

    python -m dsv3_edu generate --ckpt runs/tiny --prompt "def fibonacci(n):" --max-new-tokens 80
    python -m dsv3_edu generate --ckpt runs/tiny --prompt "import os" --speculative mtp --temperature 0
    python -m dsv3_edu generate --ckpt runs/tiny --fim-prefix "def add(a, b):\n" --fim-suffix "\n    return c\n"
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .model import Transformer


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next tokens (B,). temperature 0 is greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p          # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def generate(model: Transformer, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             attn_mode: str = "absorbed", eos_id: int | None = None, use_cache: bool = True) -> torch.Tensor:
    """prompt (B, T0) -> (B, T0 + n) with n <= max_new_tokens (stops early when every row hit ``eos_id``).

    With the cache, the prompt is prefilled once and then each step feeds one token at position start_pos.
    ``use_cache=False`` recomputes the whole prefix every step (the slow baseline, for comparison).
    """
    model.eval()
    B, T0 = prompt.shape
    if T0 == 0:
        raise ValueError("the prompt must hold at least one token")
    total = min(T0 + max_new_tokens, model.cfg.max_seq_len)
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    cache = model.new_cache(B, total) if use_cache else None
    out, pos = prompt, 0
    done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    while out.size(1) < total:
        if use_cache:
            logits = model(out[:, pos:], start_pos=pos, cache=cache, attn_mode=attn_mode).logits[:, -1]
            pos = out.size(1)
        else:
            logits = model(out, attn_mode=attn_mode).logits[:, -1]
        nxt = sample_next(logits, temperature, top_k, top_p, g)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        out = torch.cat([out, nxt[:, None]], dim=1)
        if eos_id is not None and bool(done.all()):
            break
    return out


@dataclass
class SpeculativeStats:
    drafted: int
    accepted: int
    main_forwards: int
    new_tokens: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.drafted, 1)

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / max(self.main_forwards, 1)


@torch.no_grad()
def speculative_generate(model: Transformer, prompt: torch.Tensor, max_new_tokens: int,
                         attn_mode: str = "absorbed") -> tuple[torch.Tensor, SpeculativeStats]:
    """Greedy decoding where the depth-1 MTP module drafts the token after next.

    Each main-model forward verifies [t_{n+1}, draft]: if the main model's own prediction after t_{n+1}
    equals the draft, two tokens are gained from one forward. The output is exactly greedy decoding's.
    Batch size 1 (acceptance differs per row).
    """
    if prompt.size(0) != 1:
        raise ValueError("speculative_generate decodes one sequence at a time (batch size 1)")
    if model.cfg.n_mtp < 1:
        raise ValueError("speculative decoding with MTP needs a model trained with n_mtp >= 1")
    model.eval()
    T0 = prompt.size(1)
    total = min(T0 + max_new_tokens, model.cfg.max_seq_len)
    cache = model.new_cache(1, min(total + 1, model.cfg.max_seq_len), mtp=True)
    # prefill: the main model predicts t_{T0}; MTP row i sees (h_i, t_{i+1}) and predicts t_{i+2}
    out = model(prompt, cache=cache, attn_mode=attn_mode)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)                            # (1, 1)
    follow = torch.cat([prompt[:, 1:], nxt], dim=1)
    draft = model.mtp_step(out.hidden, follow, 0, cache, attn_mode)[0][:, -1].argmax(-1, keepdim=True)
    tokens = torch.cat([prompt, nxt], dim=1)
    stats = SpeculativeStats(0, 0, 1, 1)
    while tokens.size(1) < total:
        n = tokens.size(1) - 1                                                  # position of the newest token
        if tokens.size(1) + 1 > total or n + 2 > cache[0].max_len:              # no room to verify a draft
            logits = model(tokens[:, n:], start_pos=n, cache=cache, attn_mode=attn_mode).logits
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            stats.main_forwards += 1
            stats.new_tokens += 1
            continue
        feed = torch.cat([tokens[:, n:], draft], dim=1)                         # [t_n, draft]
        o = model(feed, start_pos=n, cache=cache, attn_mode=attn_mode)
        pred = o.logits.argmax(-1)                                              # (1, 2)
        stats.main_forwards += 1
        stats.drafted += 1
        if pred[0, 0] == draft[0, 0]:                                           # draft verified
            stats.accepted += 1
            tokens = torch.cat([tokens, draft, pred[:, 1:]], dim=1)
            stats.new_tokens += 2
            follow = torch.cat([draft, pred[:, 1:]], dim=1)
            mtp_logits = model.mtp_step(o.hidden, follow, n, cache, attn_mode)[0]
        else:                                                                   # keep the main model's token
            tokens = torch.cat([tokens, pred[:, :1]], dim=1)
            stats.new_tokens += 1
            mtp_logits = model.mtp_step(o.hidden[:, :1], pred[:, :1], n, cache, attn_mode)[0]
        draft = mtp_logits[:, -1].argmax(-1, keepdim=True)
    return tokens[:, :total], stats


def compare_speculative(model: Transformer, prompt: torch.Tensor, max_new_tokens: int) -> dict:
    """Time plain greedy vs MTP speculative decoding on the same prompt; check the outputs agree."""
    t0 = time.perf_counter()
    plain = generate(model, prompt, max_new_tokens, temperature=0)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    spec, stats = speculative_generate(model, prompt, max_new_tokens)
    t_spec = time.perf_counter() - t0
    return {"identical": torch.equal(plain, spec), "acceptance_rate": stats.acceptance_rate,
            "tokens_per_forward": stats.tokens_per_forward, "plain_s": t_plain, "speculative_s": t_spec,
            "speedup": t_plain / t_spec, "new_tokens": spec.size(1) - prompt.size(1), "tokens": spec,
            "stats": stats}


def fim_prompt(tokenizer, prefix: str, suffix: str) -> list[int]:
    """PSM infilling prompt: <|fim_begin|>prefix<|fim_hole|>suffix<|fim_end|>; the model writes the middle."""
    from .data import psm_tokens
    return psm_tokens(tokenizer.encode(prefix), [], tokenizer.encode(suffix), tokenizer)
