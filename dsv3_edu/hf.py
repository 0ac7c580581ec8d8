"""Conversion to and from the Hugging Face ``DeepseekV3ForCausalLM`` format (config.json + safetensors).

Weights are written with the names of DeepSeek's released Hugging Face checkpoint (one tensor per expert:
``model.layers.{i}.mlp.experts.{j}.gate_proj.weight``), which transformers (v5 fuses the experts on load),
vLLM and others read. The MTP module has no transformers counterpart: it is exported as the released
checkpoint stores it, as layer ``n_layers`` (``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.norm``, the
block's weights, and copies of the embedding and head); transformers ignores these keys, and ``load_hf``
reads them back. The released ``eh_proj`` takes ``[enorm(emb); hnorm(h)]`` while our MTPModule (following
the report) takes ``[hnorm(h); enorm(emb)]``, so the two column halves are swapped on the way.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .model import Transformer

_ATTN = {"wq": "q_proj", "wq_a": "q_a_proj", "q_norm": "q_a_layernorm", "wq_b": "q_b_proj",
         "wkv_a": "kv_a_proj_with_mqa", "kv_norm": "kv_a_layernorm", "wkv_b": "kv_b_proj", "wo": "o_proj"}
_FFN = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


def to_hf_config(cfg: ModelConfig) -> dict:
    rope: dict = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.max_seq_len > cfg.original_seq_len:  # YaRN, as the reference code applies it
        rope = {"rope_type": "yarn", "rope_theta": cfg.rope_theta, "factor": cfg.rope_factor,
                "original_max_position_embeddings": cfg.original_seq_len, "beta_fast": cfg.beta_fast,
                "beta_slow": cfg.beta_slow, "mscale": cfg.mscale, "mscale_all_dim": cfg.mscale}
    if cfg.score_func != "sigmoid":
        # the HF model always scores with a sigmoid. (It always chooses with score + bias, too: for our
        # balance modes that choose without the bias, to_hf_state_dict exports a zero bias, which is exact.)
        raise ValueError(f"the HF DeepseekV3 format scores experts with a sigmoid; this model has "
                         f"score_func={cfg.score_func!r}")
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.inter_dim,
        "moe_intermediate_size": cfg.moe_inter_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads,
        "n_shared_experts": cfg.n_shared_experts, "n_routed_experts": cfg.n_routed_experts,
        "routed_scaling_factor": cfg.route_scale, "kv_lora_rank": cfg.kv_lora_rank,
        "q_lora_rank": cfg.q_lora_rank or None, "qk_rope_head_dim": cfg.qk_rope_head_dim,
        "v_head_dim": cfg.v_head_dim, "qk_nope_head_dim": cfg.qk_nope_head_dim, "n_group": cfg.n_expert_groups,
        "topk_group": cfg.n_limited_groups, "num_experts_per_tok": cfg.n_activated_experts,
        "first_k_dense_replace": cfg.n_dense_layers, "norm_topk_prob": True, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": False, "rope_parameters": rope,
        "rope_interleave": True, "attention_bias": False, "num_nextn_predict_layers": cfg.n_mtp,
        "torch_dtype": "float32",
    }


def _hf_yarn_attention_factor(rope: dict, factor: float) -> float:
    """transformers' YaRN ``attention_factor`` (modeling_rope_utils._compute_yarn_parameters): it multiplies cos
    and sin, so the RoPE part of every q.k score by its square, on top of the softmax scale."""
    def m(scale, ms=1.0):
        return 1.0 if scale <= 1 else 0.1 * ms * math.log(scale) + 1.0
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    if rope.get("mscale") and rope.get("mscale_all_dim"):
        return m(factor, rope["mscale"]) / m(factor, rope["mscale_all_dim"])
    return m(factor)


def from_hf_config(d: dict) -> ModelConfig:
    """Our config from a HF DeepseekV3 config.json; refuses settings our model (like DeepSeek's reference code)
    cannot express exactly, rather than loading a model whose logits differ."""
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    yarn = rope_type == "yarn"
    if rope_type not in ("default", "yarn"):
        raise ValueError(f"HF config: rope_type {rope_type!r} is not supported (only default RoPE and YaRN)")
    if not d.get("rope_interleave", True):
        raise ValueError("HF config: rope_interleave=false is not supported (DeepSeek-V3 rotates interleaved pairs)")
    if not d.get("norm_topk_prob", True):
        raise ValueError("HF config: norm_topk_prob=false is not supported (DeepSeek-V3 normalizes the top-k weights)")
    max_pos = d["max_position_embeddings"]
    mscale = 1.0
    factor = 40.0
    if yarn:
        orig = rope.get("original_max_position_embeddings", max_pos)
        if max_pos <= orig:
            raise ValueError(f"HF config: YaRN with max_position_embeddings {max_pos} <= "
                             f"original_max_position_embeddings {orig} is not supported (the reference, and this "
                             f"model, apply YaRN only beyond the original length)")
        factor = rope.get("factor") or max_pos / orig           # transformers' default when factor is absent
        if not rope.get("truncate", True):
            raise ValueError("HF config: YaRN with truncate=false is not supported (the reference truncates)")
        af = _hf_yarn_attention_factor(rope, factor)
        if abs(af - 1.0) > 1e-9:
            raise ValueError(
                f"HF config: YaRN mscale {rope.get('mscale')} and mscale_all_dim {rope.get('mscale_all_dim')} give "
                f"transformers an attention_factor of {af:.4f} on the RoPE part of q and k only; DeepSeek's "
                f"reference (and this model) scale the whole softmax by one mscale, so loading would change the "
                f"logits. Supported: mscale == mscale_all_dim (as in DeepSeek-V3's released config)")
        # transformers scales the softmax by yarn_mscale(factor, mscale_all_dim)^2 when mscale_all_dim is set,
        # not at all when it is absent or 0 (our mscale 0 gives yarn_mscale 1, the same)
        mscale = float(rope.get("mscale_all_dim") or 0.0)
    return ModelConfig(
        vocab_size=d["vocab_size"], dim=d["hidden_size"], n_layers=d["num_hidden_layers"],
        n_dense_layers=d["first_k_dense_replace"], inter_dim=d["intermediate_size"],
        n_heads=d["num_attention_heads"], q_lora_rank=d.get("q_lora_rank") or 0, kv_lora_rank=d["kv_lora_rank"],
        qk_nope_head_dim=d["qk_nope_head_dim"], qk_rope_head_dim=d["qk_rope_head_dim"], v_head_dim=d["v_head_dim"],
        max_seq_len=d["max_position_embeddings"],
        original_seq_len=rope.get("original_max_position_embeddings", d["max_position_embeddings"]) if yarn
        else max(4096, d["max_position_embeddings"]),
        rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)), rope_factor=float(factor),
        beta_fast=rope.get("beta_fast") or 32, beta_slow=rope.get("beta_slow") or 1, mscale=mscale,
        moe_inter_dim=d["moe_intermediate_size"], n_routed_experts=d["n_routed_experts"],
        n_shared_experts=d["n_shared_experts"], n_activated_experts=d["num_experts_per_tok"],
        n_expert_groups=d["n_group"], n_limited_groups=d["topk_group"], route_scale=d["routed_scaling_factor"],
        n_mtp=d.get("num_nextn_predict_layers", 0), norm_eps=d.get("rms_norm_eps", 1e-6),
        init_std=d.get("initializer_range", 0.006),
    )


def _block_to_hf(prefix: str, sd: dict, out: dict, hf: str, choose_with_bias: bool = True) -> None:
    """Block weights under ``prefix`` (ours) -> ``hf`` (theirs). ``choose_with_bias=False`` (balance "none" or
    "aux_loss": our gate ignores its bias buffer) exports a zero bias, since transformers always adds it."""
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        rest = k[len(prefix):]
        parts = rest.split(".")
        if rest == "attn_norm.weight":
            out[f"{hf}.input_layernorm.weight"] = v
        elif rest == "ffn_norm.weight":
            out[f"{hf}.post_attention_layernorm.weight"] = v
        elif parts[0] == "attn":
            out[f"{hf}.self_attn.{_ATTN[parts[1]]}.weight"] = v
        elif rest == "ffn.gate.weight":
            out[f"{hf}.mlp.gate.weight"] = v
        elif rest == "ffn.gate.bias":
            out[f"{hf}.mlp.gate.e_score_correction_bias"] = v if choose_with_bias else torch.zeros_like(v)
        elif parts[:2] == ["ffn", "experts"]:
            for j in range(v.size(0)):
                out[f"{hf}.mlp.experts.{j}.{_FFN[parts[2]]}.weight"] = v[j]
        elif parts[:2] == ["ffn", "shared_experts"]:
            out[f"{hf}.mlp.shared_experts.{_FFN[parts[2]]}.weight"] = v
        elif parts[0] == "ffn":
            out[f"{hf}.mlp.{_FFN[parts[1]]}.weight"] = v
        else:
            raise KeyError(f"no HF name for {k}")


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["head.weight"]}
    with_bias = cfg.balance == "aux_free"       # the only mode whose gate adds the bias when choosing
    for i in range(cfg.n_layers):
        _block_to_hf(f"layers.{i}.", sd, out, f"model.layers.{i}", with_bias)
    for k in range(cfg.n_mtp):
        hf = f"model.layers.{cfg.n_layers + k}"
        _block_to_hf(f"mtp.{k}.block.", sd, out, hf, with_bias)
        h_cols, e_cols = sd[f"mtp.{k}.proj.weight"].chunk(2, dim=1)
        out[f"{hf}.eh_proj.weight"] = torch.cat([e_cols, h_cols], dim=1).contiguous()
        out[f"{hf}.enorm.weight"] = sd[f"mtp.{k}.enorm.weight"]
        out[f"{hf}.hnorm.weight"] = sd[f"mtp.{k}.hnorm.weight"]
        out[f"{hf}.shared_head.norm.weight"] = sd[f"mtp.{k}.norm.weight"]
        out[f"{hf}.embed_tokens.weight"] = sd["embed.weight"].clone()
        out[f"{hf}.shared_head.head.weight"] = sd["head.weight"].clone()
    return {k: v.contiguous() for k, v in out.items()}


def save_hf(model: Transformer, path: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` that ``DeepseekV3ForCausalLM.from_pretrained`` reads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(to_hf_config(model.cfg), indent=2) + "\n")
    save_file(to_hf_state_dict(model), str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


_INV_ATTN = {v: k for k, v in _ATTN.items()}
_INV_FFN = {v: k for k, v in _FFN.items()}


def from_hf_state_dict(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF names -> ours. Accepts per-expert tensors (released checkpoints) and fused ones (transformers v5)."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    mtp_extra = {"enorm": "enorm", "hnorm": "hnorm", "shared_head.norm": "norm"}
    for k, v in hf.items():
        if k == "model.embed_tokens.weight":
            out["embed.weight"] = v
        elif k == "model.norm.weight":
            out["norm.weight"] = v
        elif k == "lm_head.weight":
            out["head.weight"] = v
        else:
            m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight|model\.layers\.(\d+)\.(.+)", k)
            i = int(m.group(1) or m.group(3))
            rest = m.group(2) if m.group(1) else m.group(4)
            ours = f"layers.{i}." if i < cfg.n_layers else f"mtp.{i - cfg.n_layers}.block."
            if i >= cfg.n_layers:
                if rest in ("embed_tokens", "shared_head.head"):
                    continue  # copies of the shared embedding and head
                if rest in mtp_extra:
                    out[f"mtp.{i - cfg.n_layers}.{mtp_extra[rest]}.weight"] = v
                    continue
                if rest == "eh_proj":
                    e_cols, h_cols = v.chunk(2, dim=1)
                    out[f"mtp.{i - cfg.n_layers}.proj.weight"] = torch.cat([h_cols, e_cols], dim=1)
                    continue
            parts = rest.split(".")
            if rest == "input_layernorm":
                out[ours + "attn_norm.weight"] = v
            elif rest == "post_attention_layernorm":
                out[ours + "ffn_norm.weight"] = v
            elif parts[0] == "self_attn":
                out[ours + f"attn.{_INV_ATTN[parts[1]]}.weight"] = v
            elif rest == "mlp.gate":
                out[ours + "ffn.gate.weight"] = v
            elif rest == "mlp.gate.e_score_correction_bias":
                out[ours + "ffn.gate.bias"] = v
            elif rest == "mlp.experts.gate_up_proj":      # fused (E, 2I, d)
                w1, w3 = v.chunk(2, dim=1)
                out[ours + "ffn.experts.w1"], out[ours + "ffn.experts.w3"] = w1, w3
            elif rest == "mlp.experts.down_proj":        # fused (E, d, I)
                out[ours + "ffn.experts.w2"] = v
            elif parts[:2] == ["mlp", "experts"]:
                experts.setdefault((ours, _INV_FFN[parts[3]]), {})[int(parts[2])] = v
            elif parts[:2] == ["mlp", "shared_experts"]:
                out[ours + f"ffn.shared_experts.{_INV_FFN[parts[2]]}.weight"] = v
            elif parts[0] == "mlp":
                out[ours + f"ffn.{_INV_FFN[parts[1]]}.weight"] = v
            else:
                raise KeyError(f"unknown HF weight {k}")
    for (ours, w), per in experts.items():
        out[ours + f"ffn.experts.{w}"] = torch.stack([per[j] for j in range(len(per))])
    return out


def load_hf(path: str | Path) -> Transformer:
    """Build our Transformer from a Hugging Face DeepseekV3 directory (config.json + *.safetensors)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'} not found: not a Hugging Face model directory")
    cfg = from_hf_config(json.loads((path / "config.json").read_text()))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    hf: dict[str, torch.Tensor] = {}
    for f in files:
        hf.update(load_file(str(f)))
    has_mtp = any(int(k.split(".")[2]) >= cfg.n_layers for k in hf if k.startswith("model.layers."))
    if not has_mtp:
        cfg = cfg.replace(n_mtp=0)  # e.g. saved by transformers, which has no MTP module
    model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(from_hf_state_dict(hf, cfg), strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
