"""The DeepSeek-V3 model, one concept per module."""
from .linear import Linear
from .mla import MLA, KVCache, causal_mask
from .moe import MLP, Experts, Gate, MoE, Routing, grouped_mm, route
from .norm import RMSNorm, rms_norm
from .rope import apply_rotary_emb, precompute_freqs_cis, rope_frequencies, yarn_mscale
from .transformer import IGNORE_INDEX, Block, ModelOutput, MTPModule, Transformer

__all__ = ["Linear", "MLA", "KVCache", "causal_mask", "MLP", "Experts", "Gate", "MoE", "Routing", "grouped_mm",
           "route",
           "RMSNorm", "rms_norm", "apply_rotary_emb", "precompute_freqs_cis", "rope_frequencies", "yarn_mscale",
           "IGNORE_INDEX", "Block", "ModelOutput", "MTPModule", "Transformer"]
