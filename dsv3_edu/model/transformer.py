"""The assembled DeepSeek-V3: embedding, L blocks (MLA + dense FFN or DeepSeekMoE), final norm, output head,
and D Multi-Token Prediction modules that share the embedding and the head."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .linear import Linear
from .mla import MLA, KVCache
from .moe import MLP, Experts, Gate, MoE, Routing
from .norm import RMSNorm
from .rope import precompute_freqs_cis

IGNORE_INDEX = -1


class Block(nn.Module):
    """Pre-norm residual block: x + MLA(norm(x)), then x + FFN(norm(x)); FFN is dense for the first layers."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = MLA(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = MLP(cfg.dim, cfg.inter_dim, cfg.fp8) if layer_id < cfg.n_dense_layers else MoE(cfg)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor, start_pos: int = 0,
                cache: KVCache | None = None, attn_mode: str = "naive", return_routing: bool = False):
        """x (B, T, d) -> (B, T, d); with ``return_routing`` a pair (x, Routing of the MoE, or None if dense)."""
        x = x + self.attn(self.attn_norm(x), freqs_cis, start_pos, cache, attn_mode)
        if isinstance(self.ffn, MoE):
            y, routing = self.ffn(self.ffn_norm(x), return_routing=True)
        else:
            y, routing = self.ffn(self.ffn_norm(x)), None
        x = x + y
        return (x, routing) if return_routing else x


class MTPModule(nn.Module):
    """MTP module k: h'_i = M_k [RMSNorm(h^{k-1}_i); RMSNorm(Emb(t_{i+k}))], h^k = TRM_k(h').

    The report writes the concatenation as [h; emb]; DeepSeek's released checkpoint feeds [emb; h] to its
    ``eh_proj``. Both are the same model up to a permutation of M_k's columns; we follow the report.
    ``norm`` is the final RMSNorm before the shared output head (``shared_head.norm`` in the checkpoint).
    """

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.hnorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.enorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.proj = Linear(2 * cfg.dim, cfg.dim)          # M_k, kept in high precision
        self.block = Block(cfg, layer_id)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, freqs_cis: torch.Tensor, start_pos: int = 0,
                cache: KVCache | None = None, attn_mode: str = "naive", return_routing: bool = False):
        """h (B, T, d) from depth k-1 at positions i; emb (B, T, d) embeddings of tokens t_{i+k}.
        ``return_routing`` as in ``Block``."""
        x = self.proj(torch.cat([self.hnorm(h), self.enorm(emb)], dim=-1))   # (B, T, d)
        return self.block(x, freqs_cis, start_pos, cache, attn_mode, return_routing)


@dataclass
class ModelOutput:
    logits: torch.Tensor                              # (B, T, V)
    loss: torch.Tensor | None = None                  # main + lambda/D * sum MTP + balance
    main_loss: torch.Tensor | None = None
    mtp_loss: torch.Tensor | None = None              # (1/D) sum_k L_MTP^k, before lambda
    mtp_losses: list[torch.Tensor] = field(default_factory=list)
    balance_loss: torch.Tensor | None = None
    mtp_logits: list[torch.Tensor] = field(default_factory=list)  # depth k: (B, T-k, V), predicting t_{i+k+1}
    hidden: torch.Tensor | None = None                # (B, T, d) last block's output (before the final norm)
    # routing of every MoE layer that ran, main layers first, then the MTP modules' (Transformer.gates() order)
    loads: list[torch.Tensor] = field(default_factory=list)           # (E,) tokens per expert
    expert_indices: list[torch.Tensor] = field(default_factory=list)  # (B, T, K) chosen experts (MTP k: T-k)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)                      # kept in high precision
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = Linear(cfg.dim, cfg.vocab_size)                             # kept in high precision
        self.mtp = nn.ModuleList(MTPModule(cfg, cfg.n_layers + k) for k in range(cfg.n_mtp))
        self.register_buffer("freqs_cis", precompute_freqs_cis(cfg), persistent=False)
        if self.embed.weight.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every weight ~ N(0, init_std) (the report: 0.006), norms 1, selection biases 0."""
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding, Gate)):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, Experts):
                for w in (m.w1, m.w2, m.w3):
                    nn.init.normal_(w, std=std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
            if isinstance(m, Gate):
                m.bias.zero_()

    # ------------------------------------------------------------------ caches
    def new_cache(self, batch: int, max_len: int, mtp: bool = False) -> list[KVCache]:
        """One KV cache per block (and per MTP module when ``mtp``), for incremental decoding."""
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"max_len {max_len} exceeds the model's max_seq_len {self.cfg.max_seq_len}")
        n = self.cfg.n_layers + (self.cfg.n_mtp if mtp else 0)
        return [KVCache(batch, max_len) for _ in range(n)]

    def _freqs(self, start_pos: int, T: int) -> torch.Tensor:
        if start_pos + T > self.cfg.max_seq_len:
            raise ValueError(f"positions up to {start_pos + T} exceed max_seq_len {self.cfg.max_seq_len}")
        return self.freqs_cis[start_pos:start_pos + T]

    # ------------------------------------------------------------------ forward
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, start_pos: int = 0,
                cache: list[KVCache] | None = None, attn_mode: str = "naive",
                with_mtp: bool | None = None) -> ModelOutput:
        """idx (B, T) token ids at positions start_pos..; targets (B, T) = next tokens (IGNORE_INDEX = skip).

        MTP modules run when training (or ``with_mtp=True``) and need the full sequence (start_pos 0).
        """
        B, T = idx.shape
        freqs = self._freqs(start_pos, T)
        emb = self.embed(idx)                                                   # (B, T, d)
        h = emb
        routing: list[Routing] = []                                             # one per MoE layer that runs
        for i, layer in enumerate(self.layers):
            h, r = layer(h, freqs, start_pos, cache[i] if cache is not None else None, attn_mode,
                         return_routing=True)
            if r is not None:
                routing.append(r)
        logits = self.head(self.norm(h)).float()                                # (B, T, V)
        out = ModelOutput(logits=logits, hidden=h)

        run_mtp = self.training if with_mtp is None else with_mtp
        if run_mtp and self.cfg.n_mtp > 0:
            if start_pos != 0:
                raise ValueError("MTP modules run on whole sequences (start_pos 0); use mtp_step for decoding")
            out.mtp_logits = self._mtp_logits(h, emb, freqs, attn_mode, routing)
        out.loads = [r.load for r in routing]
        out.expert_indices = [r.indices for r in routing]
        if targets is not None:
            self._losses(out, targets, [r.balance_loss for r in routing if r.balance_loss is not None])
        return out

    def _mtp_logits(self, h, emb, freqs, attn_mode, routing: list[Routing]) -> list[torch.Tensor]:
        """Depth k uses h^{k-1}_i and Emb(t_{i+k}) for i < T - k; its logits predict t_{i+k+1}.
        Appends each module's routing to ``routing``."""
        T, outs = h.size(1), []
        for k, module in enumerate(self.mtp, start=1):
            if T - k <= 0:
                break
            h, r = module(h[:, :T - k], emb[:, k:], freqs[:T - k], attn_mode=attn_mode,
                          return_routing=True)                                  # (B, T-k, d)
            if r is not None:
                routing.append(r)
            outs.append(self.head(module.norm(h)).float())
        return outs

    def _losses(self, out: ModelOutput, targets: torch.Tensor, balance_losses: list[torch.Tensor]) -> None:
        cfg = self.cfg
        V = cfg.vocab_size
        out.main_loss = F.cross_entropy(out.logits.view(-1, V), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        loss = out.main_loss
        if out.mtp_logits:
            # targets[:, j] = t_{j+1}, so depth k's prediction of t_{i+k+1} at row i is targets[:, i + k]
            out.mtp_losses = [F.cross_entropy(lg.reshape(-1, V), targets[:, k:].reshape(-1), ignore_index=IGNORE_INDEX)
                              for k, lg in enumerate(out.mtp_logits, start=1)]
            out.mtp_loss = torch.stack(out.mtp_losses).sum() / cfg.n_mtp
            loss = loss + cfg.mtp_lambda * out.mtp_loss
        if balance_losses:                                  # training forwards only (see MoE.routing)
            out.balance_loss = torch.stack(balance_losses).sum()
            loss = loss + out.balance_loss
        out.loss = loss

    def gates(self) -> list[Gate]:
        """Every routing gate, in the order of ``ModelOutput.loads``: main MoE layers, then the MTP modules'."""
        blocks = [*self.layers, *(m.block for m in self.mtp)]
        return [b.ffn.gate for b in blocks if isinstance(b.ffn, MoE)]

    # ------------------------------------------------------------------ decoding with MTP
    def mtp_step(self, h: torch.Tensor, next_idx: torch.Tensor, start_pos: int, cache: list[KVCache] | None,
                 attn_mode: str = "absorbed") -> list[torch.Tensor]:
        """Run the MTP chain incrementally for speculative decoding.

        h (B, T, d): main-model hidden states at positions start_pos..start_pos+T-1; next_idx (B, T): the tokens
        one position later. Returns depth-1 logits (B, T, V) predicting two positions ahead (deeper modules
        would need tokens further ahead, so only depth 1 drafts here). ``cache`` is the list from
        ``new_cache(..., mtp=True)``; the MTP caches sit after the main layers.
        """
        if self.cfg.n_mtp == 0:
            raise ValueError("this model has no MTP module (n_mtp = 0)")
        module = self.mtp[0]
        c = cache[self.cfg.n_layers] if cache is not None else None
        hk = module(h, self.embed(next_idx), self._freqs(start_pos, h.size(1)), start_pos, c, attn_mode)
        return [self.head(module.norm(hk)).float()]

    # ------------------------------------------------------------------ utilities
    def num_params(self, include_mtp: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if include_mtp else n - sum(p.numel() for p in self.mtp.parameters())
