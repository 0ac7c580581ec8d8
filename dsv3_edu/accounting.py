"""Parameter and KV-cache accounting for any config, the 671B model included.

The counts come from building the real ``Transformer`` on PyTorch's meta device (shapes, no memory), so the
numbers printed for DeepSeek-V3 are produced by the same code that trains the small models.

    python -m dsv3_edu.accounting --preset deepseek-v3
    python -m dsv3_edu.accounting --config my_config.json --json
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .config import ModelConfig, get_config


def build_meta(cfg: ModelConfig):
    from .model import Transformer
    with torch.device("meta"):
        return Transformer(cfg)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """total / activated (per token) parameters of the main model, MTP parameters, and a breakdown."""
    from .model import MoE
    model = build_meta(cfg)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    main = count(model) - count(model.mtp)
    mtp = count(model.mtp)
    moe_layers = [b.ffn for b in model.layers if isinstance(b.ffn, MoE)]
    per_expert = 3 * cfg.dim * cfg.moe_inter_dim
    inactive = len(moe_layers) * (cfg.n_routed_experts - cfg.n_activated_experts) * per_expert
    mtp_inactive = cfg.n_mtp * (cfg.n_routed_experts - cfg.n_activated_experts) * per_expert
    embed, head = count(model.embed), count(model.head)
    return {
        "total_params": main,
        "activated_params": main - inactive,
        "mtp_params": mtp,                        # own weights; embedding and head are shared
        "mtp_activated_params": mtp - mtp_inactive,
        "mtp_params_on_disk": mtp + embed + head,  # the released checkpoint stores copies of both with MTP
        "total_with_mtp_on_disk": main + mtp + embed + head,
        "embedding_params": embed,
        "head_params": head,
        "attention_params": sum(count(b.attn) for b in model.layers),
        "routed_expert_params": sum(count(m.experts) for m in moe_layers),
        "shared_expert_params": sum(count(m.shared_experts) for m in moe_layers if m.shared_experts is not None),
        "dense_ffn_params": sum(count(b.ffn) for b in model.layers if not isinstance(b.ffn, MoE)),
    }


def kv_cache_elements_per_token(cfg: ModelConfig, kind: str = "mla", n_kv_groups: int = 8) -> int:
    """Cached numbers per token over all layers.

    mla: c_KV and k^R (d_c + d_h^R); mha: K and V for every head (2 n_h d_h); gqa: 2 n_kv_groups d_h;
    mqa: one K and V head (2 d_h). d_h is the per-head dim of the same shape (qk_nope_head_dim).
    """
    d_h, L = cfg.qk_nope_head_dim, cfg.n_layers
    per_layer = {
        "mla": cfg.kv_lora_rank + cfg.qk_rope_head_dim,
        "mha": 2 * cfg.n_heads * d_h,
        "gqa": 2 * n_kv_groups * d_h,
        "mqa": 2 * d_h,
    }
    if kind not in per_layer:
        raise ValueError(f"kind must be one of {sorted(per_layer)}, got {kind!r}")
    return per_layer[kind] * L


def kv_cache_bytes_per_token(cfg: ModelConfig, kind: str = "mla", bytes_per_elem: int = 2,
                             n_kv_groups: int = 8) -> int:
    """KV-cache bytes per token (BF16 by default)."""
    return kv_cache_elements_per_token(cfg, kind, n_kv_groups) * bytes_per_elem


def report(cfg: ModelConfig) -> dict:
    out = param_counts(cfg)
    out["kv_cache_bytes_per_token"] = kv_cache_bytes_per_token(cfg, "mla")
    out["kv_cache_elements_per_token_per_layer"] = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    for kind in ("mha", "gqa", "mqa"):
        out[f"{kind}_kv_cache_bytes_per_token"] = kv_cache_bytes_per_token(cfg, kind)
    return out


def format_count(n: int) -> str:
    """1234567 -> '1.23M' (K, M, B with two decimals; plain below 1000)."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:,.2f}{unit}"
    return str(n)


def format_report(r: dict) -> str:
    rows = [
        ("total parameters (main model)", format_count(r["total_params"])),
        ("activated per token", format_count(r["activated_params"])),
        ("MTP module(s), own weights", format_count(r["mtp_params"])),
        ("MTP as stored (+ embedding, head copies)", format_count(r["mtp_params_on_disk"])),
        ("total on disk (main + stored MTP)", format_count(r["total_with_mtp_on_disk"])),
        ("KV cache / token, MLA (BF16)", f"{r['kv_cache_bytes_per_token']:,} bytes"),
        ("KV cache / token, MHA (BF16)", f"{r['mha_kv_cache_bytes_per_token']:,} bytes"),
        ("KV cache / token, GQA-8 (BF16)", f"{r['gqa_kv_cache_bytes_per_token']:,} bytes"),
        ("KV cache / token, MQA (BF16)", f"{r['mqa_kv_cache_bytes_per_token']:,} bytes"),
    ]
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{w}}  {b:>18}" for a, b in rows)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    """The CLI; a missing or malformed config (bad JSON, unknown key, bad value) gives one line and exit 2."""
    p = _Parser(prog="python -m dsv3_edu.accounting", description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default="deepseek-v3",
                   help="preset name: nano, tiny, small, deepseek-v3 (default: %(default)s)")
    g.add_argument("--config", help="path to a config JSON (ours or DeepSeek's config_671B.json)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        cfg = get_config(args.config or args.preset)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = report(cfg)
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
