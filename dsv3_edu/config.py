"""Model configuration: one dataclass, a few presets, early and clear validation.

Field names follow DeepSeek's reference inference code (``inference/model.py`` ModelArgs) so that
``configs/config_671B.json`` reads straight in. Symbols from the technical report are in the comments.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path


@dataclass
class ModelConfig:
    # --- sizes
    vocab_size: int = 8192
    dim: int = 256                    # d, hidden size
    n_layers: int = 4                 # L
    n_dense_layers: int = 1           # first layers use a dense SwiGLU FFN instead of MoE
    inter_dim: int = 768              # dense FFN inner size
    # --- MLA
    n_heads: int = 4                  # n_h
    q_lora_rank: int = 96             # d_c' (0 = no query compression)
    kv_lora_rank: int = 64            # d_c
    qk_nope_head_dim: int = 64        # d_h (the content part of q and k)
    qk_rope_head_dim: int = 32        # d_h^R (decoupled RoPE part)
    v_head_dim: int = 64              # d_h for values
    # --- RoPE / YaRN
    max_seq_len: int = 256            # longest sequence the RoPE table covers
    original_seq_len: int = 4096      # YaRN is applied only when max_seq_len > original_seq_len
    rope_theta: float = 10000.0
    rope_factor: float = 40.0         # s
    beta_fast: int = 32               # beta
    beta_slow: int = 1                # alpha
    mscale: float = 1.0
    # --- DeepSeekMoE
    moe_inter_dim: int = 128          # expert inner size
    n_routed_experts: int = 16        # N_r
    n_shared_experts: int = 1         # N_s
    n_activated_experts: int = 4      # K_r
    n_expert_groups: int = 4          # groups (= nodes in the real deployment)
    n_limited_groups: int = 2         # groups kept per token (M)
    route_scale: float = 2.5
    score_func: str = "sigmoid"       # "sigmoid" (V3) or "softmax" (V2)
    # --- load balancing
    balance: str = "aux_free"         # "aux_free" (bias, V3), "aux_loss" (classic), "none"
    bias_update_speed: float = 0.001  # gamma
    seq_aux_alpha: float = 0.0001     # alpha of the complementary sequence-wise balance loss (0 = off)
    aux_loss_alpha: float = 0.01      # alpha of the classic auxiliary loss, used when balance == "aux_loss"
    # --- MTP
    n_mtp: int = 1                    # D, MTP depth (0 = off)
    mtp_lambda: float = 0.3           # lambda
    # --- misc
    norm_eps: float = 1e-6
    init_std: float = 0.006
    fp8: bool = False                 # FP8-simulated GEMMs in the Linear layers and experts
    scale_fmt: str | None = None      # FP8 scales: None = float32 amax / 448, "ue8m0" = rounded up to a power of 2

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    @property
    def experts_per_group(self) -> int:
        return self.n_routed_experts // self.n_expert_groups

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"ModelConfig: {msg}")

        for f in fields(self):                  # types first: a JSON file or a --set can hold anything
            v = getattr(self, f.name)
            need(_type_ok(f.type, v), f"{f.name} must be {_TYPE_WORDS[f.type]}, got {v!r}")
            need(f.type != "float" or math.isfinite(v), f"{f.name} must be a finite number, got {v!r}")
        for name, allowed in CHOICES.items():
            need(getattr(self, name) in allowed,
                 f"{name} must be one of {_fmt_choices(allowed)}, got {getattr(self, name)!r}")

        for f in ("vocab_size", "dim", "n_layers", "n_heads", "kv_lora_rank", "qk_nope_head_dim",
                  "v_head_dim", "inter_dim", "moe_inter_dim", "max_seq_len", "original_seq_len"):
            need(getattr(self, f) > 0, f"{f} must be positive, got {getattr(self, f)}")
        need(self.qk_rope_head_dim > 0 and self.qk_rope_head_dim % 2 == 0,
             f"qk_rope_head_dim must be positive and even (RoPE rotates pairs), got {self.qk_rope_head_dim}")
        need(self.q_lora_rank >= 0, f"q_lora_rank must be >= 0 (0 = no query compression), got {self.q_lora_rank}")
        need(0 <= self.n_dense_layers <= self.n_layers,
             f"n_dense_layers ({self.n_dense_layers}) must be between 0 and n_layers ({self.n_layers})")
        need(self.n_shared_experts >= 0, f"n_shared_experts must be >= 0, got {self.n_shared_experts}")
        if self.n_moe_layers > 0:
            need(self.n_routed_experts > 0, "n_routed_experts must be positive when there are MoE layers")
            need(0 < self.n_activated_experts <= self.n_routed_experts,
                 f"top-k n_activated_experts ({self.n_activated_experts}) must be in 1..n_routed_experts "
                 f"({self.n_routed_experts})")
            need(self.n_expert_groups > 0 and self.n_routed_experts % self.n_expert_groups == 0,
                 f"n_expert_groups ({self.n_expert_groups}) must divide n_routed_experts ({self.n_routed_experts})")
            need(0 < self.n_limited_groups <= self.n_expert_groups,
                 f"n_limited_groups ({self.n_limited_groups}) must be in 1..n_expert_groups ({self.n_expert_groups})")
            need(self.n_expert_groups == 1 or self.experts_per_group >= 2,
                 "group-limited routing scores a group by its top-2 experts: each group needs >= 2 experts")
            need(self.n_activated_experts <= self.n_limited_groups * self.experts_per_group,
                 f"top-k ({self.n_activated_experts}) exceeds the experts in the kept groups "
                 f"({self.n_limited_groups} x {self.experts_per_group})")
        need(self.n_mtp >= 0, f"n_mtp (MTP depth D) must be >= 0, got {self.n_mtp}")
        need(self.rope_factor >= 1.0, f"rope_factor must be >= 1, got {self.rope_factor}")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_reference(cls, d: dict) -> ModelConfig:
        """A config in the format of DeepSeek's ``inference/configs/*.json``: what the reference builds from it.

        A key the file leaves out takes the reference ``ModelArgs`` default, not ours: ``max_seq_len`` is then
        4096 * 4 = 16384 > ``original_seq_len`` 4096, so YaRN is on, as in the reference. ``dtype`` (the reference's
        weight storage, bf16 or fp8) and ``max_batch_size`` (its KV-cache size) have no counterpart here and are
        dropped. Our own fields (MTP depth, balancing, init) keep our defaults, which are the report's.
        """
        unknown = sorted(set(d) - set(_REFERENCE_DEFAULTS) - _REFERENCE_ONLY_KEYS)
        if unknown:
            raise ValueError(f"ModelConfig: unknown keys {unknown} in a reference config; known keys are "
                             f"{sorted(set(_REFERENCE_DEFAULTS) | _REFERENCE_ONLY_KEYS)}")
        return cls.from_dict({**_REFERENCE_DEFAULTS, **{k: v for k, v in d.items() if k not in _REFERENCE_ONLY_KEYS}})

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        """Read our own config JSON (a missing key takes our default) or one of DeepSeek's reference configs
        (``config_671B.json``, ``config_v3.1.json``, ...: see :func:`is_reference_config` and :meth:`from_reference`).
        Errors name the file: missing, not JSON, not an object, an unknown key or a bad value."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {path} is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"config file {path} must hold a JSON object of fields, got {type(d).__name__}")
        try:
            if is_reference_config(d):
                return cls.from_reference(d)
            return cls.from_dict({k: v for k, v in d.items() if k not in _REFERENCE_ONLY_KEYS})
        except (TypeError, ValueError) as e:
            raise ValueError(f"config file {path}: {e}") from None

    def replace(self, **changes) -> ModelConfig:
        return replace(self, **changes)


# the fields that take one of a few values (None is written null in JSON, none on the command line)
CHOICES: dict[str, tuple] = {
    "score_func": ("sigmoid", "softmax"),
    "balance": ("aux_free", "aux_loss", "none"),
    "scale_fmt": (None, "ue8m0"),
}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "str | None": "a string or null"}


def _fmt_choices(allowed: tuple) -> str:
    return ", ".join("null" if a is None else repr(a) for a in allowed)


def _type_ok(t: str, v) -> bool:
    """Does value v fit the annotation t (a string: this module uses ``from __future__ import annotations``)?"""
    if t == "bool":
        return isinstance(v, bool)
    if isinstance(v, bool):                     # True is an int to Python, not to a config
        return False
    return {"int": isinstance(v, int), "float": isinstance(v, (int, float)), "str": isinstance(v, str),
            "str | None": v is None or isinstance(v, str)}[t]


def parse_sets(items: list[str] | None) -> dict:
    """``--set FIELD=VALUE ...`` of a command line -> {field: value}, each VALUE parsed by :func:`parse_field`."""
    out = {}
    for kv in items or []:
        if "=" not in kv:
            raise ValueError(f"--set {kv}: expected FIELD=VALUE, e.g. n_mtp=0 or balance=aux_loss")
        k, v = kv.split("=", 1)
        out[k.strip()] = parse_field(k.strip(), v)
    return out


def parse_field(name: str, text: str):
    """One ``FIELD=VALUE`` of the command line, VALUE parsed by the field's type: ``balance=aux_loss``,
    ``balance='"aux_loss"'`` (JSON-quoted), ``n_mtp=0``, ``fp8=true``, ``rope_factor=40``, ``scale_fmt=none``.
    Raises ValueError with one line naming the field and what it accepts."""
    types = {f.name: f.type for f in fields(ModelConfig)}
    if name not in types:
        raise ValueError(f"unknown model field {name!r}; fields: {', '.join(types)}")
    t = types[name]
    raw = text.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        raw = raw[1:-1]                         # '"aux_loss"' -> aux_loss
    allowed = CHOICES.get(name)
    want = f"one of {_fmt_choices(allowed)}" if allowed else _TYPE_WORDS[t]
    try:
        if t == "bool":
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[raw.lower()]
        elif t == "int":
            value = int(raw)
        elif t == "float":
            value = float(raw)
        elif t == "str | None" and raw.lower() in ("none", "null", ""):
            value = None
        else:
            value = raw
    except (KeyError, ValueError):
        raise ValueError(f"{name}={text}: {name} must be {want}") from None
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name}={text}: {name} must be {want}")
    return value


# DeepSeek's reference ModelArgs defaults (inference/model.py of deepseek-ai/DeepSeek-V3): what a key missing
# from a reference config JSON means there. (Its size defaults describe DeepSeek-V2-Lite.)
_REFERENCE_DEFAULTS = dict(
    max_seq_len=4096 * 4, scale_fmt=None, vocab_size=102400, dim=2048, inter_dim=10944, moe_inter_dim=1408,
    n_layers=27, n_dense_layers=1, n_heads=16, n_routed_experts=64, n_shared_experts=2, n_activated_experts=6,
    n_expert_groups=1, n_limited_groups=1, score_func="softmax", route_scale=1.0, q_lora_rank=0, kv_lora_rank=512,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, original_seq_len=4096, rope_theta=10000.0,
    rope_factor=40.0, beta_fast=32, beta_slow=1, mscale=1.0,
)
# keys of the reference configs with no counterpart here (weight storage dtype, KV-cache batch size)
_REFERENCE_ONLY_KEYS = {"dtype", "max_batch_size"}


def is_reference_config(d: dict) -> bool:
    """True for a dict in the format of DeepSeek's ``inference/configs``: only ModelArgs keys (none of our own,
    which every config this package saves has), and ``dtype`` or the model's sizes (``config_16B.json`` has no
    dtype). A short hand-written file such as ``{"dim": 64}`` stays ours: its missing keys take our defaults."""
    keys = set(d)
    return (keys <= set(_REFERENCE_DEFAULTS) | _REFERENCE_ONLY_KEYS
            and ("dtype" in keys or {"vocab_size", "dim", "n_layers", "n_heads"} <= keys))


def _deepseek_v3() -> ModelConfig:
    # inference/configs/config_671B.json of deepseek-ai/DeepSeek-V3, plus report facts (MTP D=1, init 0.006)
    return ModelConfig(
        vocab_size=129280, dim=7168, n_layers=61, n_dense_layers=3, inter_dim=18432,
        n_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, max_seq_len=4096 * 4, original_seq_len=4096, rope_theta=10000.0, rope_factor=40.0,
        beta_fast=32, beta_slow=1, mscale=1.0, moe_inter_dim=2048, n_routed_experts=256, n_shared_experts=1,
        n_activated_experts=8, n_expert_groups=8, n_limited_groups=4, route_scale=2.5, score_func="sigmoid",
        n_mtp=1, mtp_lambda=0.3, init_std=0.006,
    )


PRESETS: dict[str, ModelConfig] = {
    # trains in about a minute on a laptop CPU
    "nano": ModelConfig(vocab_size=8192, dim=128, n_layers=3, n_dense_layers=1, inter_dim=384, n_heads=4,
                        q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
                        max_seq_len=128, moe_inter_dim=64, n_routed_experts=8, n_shared_experts=1,
                        n_activated_experts=2, n_expert_groups=4, n_limited_groups=2),
    # notebook 09's model: minutes on a 2-core CPU
    "tiny": ModelConfig(vocab_size=8192, dim=256, n_layers=4, n_dense_layers=1, inter_dim=768, n_heads=4,
                        q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
                        max_seq_len=256, moe_inter_dim=128, n_routed_experts=16, n_shared_experts=1,
                        n_activated_experts=4, n_expert_groups=4, n_limited_groups=2),
    # the default run's model (docs/recipe.md): small and trained long, for a 2-core CPU's ~10 minutes. The sweep
    # at equal wall-clock chose vocabulary 4096 (its head costs half of 8192's; 2048 packs too few bytes per token)
    # and MTP off (its extra block and second pass through the head cost more tokens than it gives back here)
    "cpu": ModelConfig(vocab_size=4096, dim=128, n_layers=4, n_dense_layers=1, inter_dim=384, n_heads=4,
                       q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
                       max_seq_len=256, moe_inter_dim=96, n_routed_experts=8, n_shared_experts=1,
                       n_activated_experts=2, n_expert_groups=4, n_limited_groups=2, n_mtp=0),
    # a laptop-GPU / patient-CPU model
    "small": ModelConfig(vocab_size=8192, dim=512, n_layers=8, n_dense_layers=1, inter_dim=1536, n_heads=8,
                         q_lora_rank=192, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
                         max_seq_len=512, moe_inter_dim=256, n_routed_experts=32, n_shared_experts=1,
                         n_activated_experts=6, n_expert_groups=8, n_limited_groups=3),
    # the real 671B shape: for accounting on the meta device only
    "deepseek-v3": _deepseek_v3(),
}


def get_config(name_or_path: str | Path, **overrides) -> ModelConfig:
    """A preset by name, or a config JSON by path, with field overrides."""
    key = str(name_or_path)
    if key in PRESETS:
        cfg = PRESETS[key]
    elif Path(key).is_file():
        cfg = ModelConfig.load(key)
    elif key.endswith(".json") or "/" in key or "\\" in key:
        raise ValueError(f"config file {key!r} not found (presets: {', '.join(PRESETS)})")
    else:
        raise ValueError(f"unknown preset or missing config file {key!r}; presets: {', '.join(PRESETS)}")
    return cfg.replace(**overrides) if overrides else replace(cfg)
