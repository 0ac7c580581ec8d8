"""Training FLOPs per token from a config, and this machine's measured matmul peak: together, MFU.

Model FLOPs per token (the usual convention of Kaplan et al. 2020 and PaLM's appendix B, as in nanoGPT):

    flops/token = 6 * N  +  6 * L' * H * (d_qk + d_v) * T

* ``N``: weights that multiply each token (activated parameters that are matrices): MLA's projections, the
  dense FFN, per MoE layer the router (E x d), the K_r chosen experts and the shared expert(s), the output
  head, and for each MTP module its projection M_k, its block and the shared head once more. Not counted: the
  embedding (a lookup, no multiply), RMSNorm weights and other elementwise work (softmax, SiLU, RoPE).
* a matmul of a token with an (out x in) matrix costs 2 * in * out FLOPs forward (one multiply, one add) and
  twice that backward (gradients of the input and of the weight): 2 + 4 = 6 FLOPs per weight.
* attention scores: per layer, head and key, q.k costs 2 (d_h + d_h^R) and probs.v costs 2 d_v forward, over
  T keys (the full sequence, as PaLM counts it; a causal mask leaves about half of them), times 3 for
  forward + backward. L' counts the main model's layers plus the MTP blocks.
* MTP depth k runs on the first T - k positions only, so per token of the batch its cost is scaled by
  (T - k) / T and its attention covers T - k keys.

Achieved FLOP/s = tokens/s x flops/token; MFU = achieved / peak, the peak being the fastest square GEMM this
machine runs in the run's dtype (``matmul_peak``; ``python benchmarks/bench_matmul_peak.py``).
"""
from __future__ import annotations

import functools
import time

import torch

from .config import ModelConfig


def attention_matmul_params(cfg: ModelConfig) -> int:
    """Weights of one MLA layer: W_DQ, W_UQ/W_QR (or W_Q), W_DKV/W_KR, W_UK/W_UV, W_O."""
    qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    if cfg.q_lora_rank:
        q = cfg.dim * cfg.q_lora_rank + cfg.q_lora_rank * cfg.n_heads * qk
    else:
        q = cfg.dim * cfg.n_heads * qk
    kv_a = cfg.dim * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    kv_b = cfg.kv_lora_rank * cfg.n_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim)
    o = cfg.n_heads * cfg.v_head_dim * cfg.dim
    return q + kv_a + kv_b + o


def moe_matmul_params(cfg: ModelConfig) -> int:
    """Weights one token multiplies in a DeepSeekMoE layer: router, K_r routed experts, shared expert(s)."""
    expert = 3 * cfg.dim * cfg.moe_inter_dim                       # SwiGLU: w1, w3 (I x d), w2 (d x I)
    return cfg.n_routed_experts * cfg.dim + (cfg.n_activated_experts + cfg.n_shared_experts) * expert


def matmul_params(cfg: ModelConfig) -> dict[str, int]:
    """Per-token matmul weights: ``main`` (L blocks + head), ``mtp`` (per MTP module: M_k, block, head)."""
    dense_ffn = 3 * cfg.dim * cfg.inter_dim
    blocks = (cfg.n_layers * attention_matmul_params(cfg) + cfg.n_dense_layers * dense_ffn
              + cfg.n_moe_layers * moe_matmul_params(cfg))
    head = cfg.dim * cfg.vocab_size
    # an MTP module's block has layer_id >= n_layers >= n_dense_layers, so its FFN is always an MoE
    mtp_module = 2 * cfg.dim * cfg.dim + attention_matmul_params(cfg) + moe_matmul_params(cfg) + head
    return {"blocks": blocks, "head": head, "main": blocks + head, "mtp_module": mtp_module}


def flops_per_token(cfg: ModelConfig, seq_len: int, mtp: bool = True) -> dict[str, float]:
    """Training FLOPs (forward + backward) per token of a (B, seq_len) batch, with a breakdown.

    ``mtp=False`` leaves the MTP modules out (evaluation runs the main model only). Keys: ``main`` (6 N of
    the main model), ``attention`` (its T-dependent term), ``mtp`` (all MTP modules, both terms), ``total``.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    T = seq_len
    p = matmul_params(cfg)
    per_key = 6 * cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
    main = 6.0 * p["main"]
    attention = float(cfg.n_layers * per_key * T)
    mtp_flops = 0.0
    if mtp:
        for k in range(1, cfg.n_mtp + 1):
            if T - k <= 0:
                break
            mtp_flops += (T - k) / T * (6.0 * p["mtp_module"] + per_key * (T - k))
    return {"main": main, "attention": attention, "mtp": mtp_flops, "total": main + attention + mtp_flops}


# ----------------------------------------------------------------------------- the peak
DEFAULT_SIZES = {"cpu": (1024, 2048), "cuda": (4096, 8192)}


def measure_matmul_peak(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                        sizes: tuple[int, ...] | None = None, min_time_s: float = 0.3,
                        max_single_s: float = 1.0) -> dict:
    """FLOP/s of square GEMMs ``a @ b`` (n x n) in ``dtype`` on ``device``: the best of repeated runs per size.

    Each size repeats for at least ``min_time_s``; larger sizes are skipped once one product takes longer
    than ``max_single_s`` (a CPU without native bf16 runs bf16 GEMMs ~50x slower than fp32: that is measured,
    not waited for). Returns ``{"peak": best FLOP/s, "by_size": {n: FLOP/s}, "dtype", "device", "threads"}``.
    """
    device = torch.device(device)
    sizes = sizes or DEFAULT_SIZES.get(device.type, (1024, 2048))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    by_size: dict[int, float] = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        sync()
        t0 = time.perf_counter()
        a @ b                                              # warm-up (and a first timing)
        sync()
        first = time.perf_counter() - t0
        best, spent, reps = first, first, 0
        while spent < min_time_s and reps < 50 and first <= max_single_s:
            t0 = time.perf_counter()
            a @ b
            sync()
            dt = time.perf_counter() - t0
            best, spent, reps = min(best, dt), spent + dt, reps + 1
        by_size[n] = 2 * n ** 3 / best
        if first > max_single_s:
            break
    return {"peak": max(by_size.values()), "by_size": by_size, "dtype": str(dtype).replace("torch.", ""),
            "device": str(device), "threads": torch.get_num_threads()}


@functools.cache
def _cached_peak(dtype: torch.dtype, device: str, threads: int) -> float:
    return measure_matmul_peak(dtype, device)["peak"]


def matmul_peak(dtype: torch.dtype, device: str | torch.device) -> float:
    """``measure_matmul_peak(...)["peak"]``, measured once per process, dtype, device and thread count."""
    return _cached_peak(dtype, str(torch.device(device)), torch.get_num_threads())


def mfu(tokens_per_s: float, flops_per_tok: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (tokens/s x FLOPs/token) over the peak FLOP/s."""
    return tokens_per_s * flops_per_tok / peak_flops if peak_flops > 0 else float("nan")
