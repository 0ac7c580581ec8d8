"""Expert parallelism (EP) for the DeepSeekMoE layer: all-to-all dispatch and combine.

With W ranks and E routed experts, rank r holds experts [r*E/W, (r+1)*E/W) and its own tokens. The router
(Gate) and the shared experts are replicated, so routing needs no communication. One MoE forward:

  1. route     every rank routes its tokens with the replicated gate (the package's ``route``).
  2. dispatch  each token is sent ONCE to every rank that owns at least one of its K experts (DeepSeek's
               dispatch dedups per node), with its K expert ids and K gating weights. The split sizes are
               exchanged first (a plain all-to-all on counts), then the rows (an autograd-aware all-to-all).
  3. compute   each rank runs its local experts on what it received (the package's ``Experts``, one grouped
               GEMM) and sums, per received row, g_i FFN_i(x) over the experts it owns.
  4. combine   the reverse all-to-all brings one partial sum per (token, rank) home; summing them over ranks
               gives sum_i g_i FFN_i(x). The shared experts are added locally.

Backward is the same picture in reverse: the all-to-all's gradient is the reverse all-to-all.
Node-limited routing: with one expert group per rank ("node"), the group-limited top-k keeps M groups, so a
token reaches at most M ranks; ``dispatch_stats`` measures it. ``plan_redundant_experts`` is the
inference-time trick of replicating hot experts to even out per-rank load.

Run the check: ``python -m dsv3_edu.parallel.ep --world-size 4`` or
``torchrun --nproc-per-node 4 -m dsv3_edu.parallel.ep`` (docs/expert_parallel.md).
"""
from __future__ import annotations

import argparse
import copy
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from ..balance import expert_load, max_violation, reduce_loads
from ..config import ModelConfig, get_config
from ..model.moe import Experts, MoE, Routing, route
from .launch import init_torchrun, rank_device, running_under_torchrun, spawn_run

# ============================================================================ planning (pure, no communication)


def destination_mask(indices: torch.Tensor, world_size: int, experts_per_rank: int) -> torch.Tensor:
    """indices (N, K) chosen experts -> (N, W) bool: does token n need rank w (owner of expert e = e // E_r)?"""
    dest = indices // experts_per_rank                                          # (N, K) owner rank per slot
    return torch.zeros(indices.size(0), world_size, dtype=torch.bool, device=indices.device).scatter_(1, dest, True)


class DispatchPlan(NamedTuple):
    """Which token rows this rank sends where. Copies are ordered by destination rank, then token."""
    tokens: torch.Tensor       # (S,) local token index of each sent copy
    send_counts: torch.Tensor  # (W,) copies sent to each rank


def dispatch_plan(indices: torch.Tensor, world_size: int, experts_per_rank: int) -> DispatchPlan:
    """One copy per (token, destination rank), grouped by rank as all_to_all_single wants its input."""
    sent = destination_mask(indices, world_size, experts_per_rank)              # (N, W)
    _, tokens = sent.t().nonzero(as_tuple=True)                                 # (S,) sorted by rank, then token
    return DispatchPlan(tokens, sent.sum(0))


@dataclass
class DispatchStats:
    """What one dispatch moves. Combine sends the same rows back (one partial sum per token and rank)."""
    ranks_per_token: torch.Tensor   # (N,) ranks a token is sent to
    copies_per_rank: torch.Tensor   # (W,) token copies each rank receives
    bytes_per_token: float          # mean dispatch bytes per token, one copy per destination rank
    bytes_per_token_no_dedup: float  # one copy per chosen expert instead (K per token)

    @property
    def mean_ranks(self) -> float:
        return self.ranks_per_token.float().mean().item()

    @property
    def max_ranks(self) -> int:
        return int(self.ranks_per_token.max())


def dispatch_stats(indices: torch.Tensor, n_experts: int, world_size: int, experts_per_rank: int, dim: int,
                   bytes_per_elem: int) -> DispatchStats:
    """Bytes moved and ranks touched per token for the routing ``indices`` (N, K).

    A token's hidden state (``dim`` elements of ``bytes_per_elem`` bytes: 2 for BF16, 1 for an FP8 dispatch)
    is counted once per destination rank, as ``EPMoE`` sends it (metadata: K ids and weights, not counted).
    """
    if indices.dim() != 2:
        raise ValueError(f"indices must be (N, K), got shape {tuple(indices.shape)}")
    if world_size < 1 or experts_per_rank < 1 or world_size * experts_per_rank != n_experts:
        raise ValueError(f"world_size ({world_size}) x experts_per_rank ({experts_per_rank}) must equal "
                         f"n_experts ({n_experts})")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_experts):
        raise ValueError(f"indices must lie in [0, {n_experts}), got [{int(indices.min())}, {int(indices.max())}]")
    if dim < 1 or bytes_per_elem <= 0:
        raise ValueError(f"dim and bytes_per_elem must be positive, got {dim} and {bytes_per_elem}")
    sent = destination_mask(indices, world_size, experts_per_rank)              # (N, W)
    ranks = sent.sum(1)                                                         # (N,)
    row_bytes = dim * bytes_per_elem
    return DispatchStats(ranks, sent.sum(0), ranks.float().mean().item() * row_bytes,
                         indices.size(1) * row_bytes)


def max_ranks_per_token(top_k: int, n_groups: int, topk_groups: int, world_size: int) -> int:
    """The bound group-limited routing guarantees on the ranks a token reaches (experts split evenly).

    G groups a multiple of W: a rank holds whole groups, so M kept groups touch <= M ranks.
    W a multiple of G: a group spans W/G ranks, so <= M * W/G. Otherwise only the trivial bound. Never > K or W.
    """
    if n_groups % world_size == 0:
        bound = topk_groups
    elif world_size % n_groups == 0:
        bound = topk_groups * (world_size // n_groups)
    else:
        bound = world_size
    return min(bound, top_k, world_size)


def node_limited_comparison(scores: torch.Tensor, bias: torch.Tensor | None, cfg: ModelConfig, world_size: int,
                            bytes_per_elem: int = 2) -> dict[str, DispatchStats]:
    """Route the same affinities (N, E) with the group limit (cfg's M groups) and without (plain top-K)."""
    E, K = cfg.n_routed_experts, cfg.n_activated_experts
    _, limited = route(scores, bias, K, cfg.n_expert_groups, cfg.n_limited_groups, cfg.route_scale)
    _, free = route(scores, bias, K, 1, 1, cfg.route_scale)
    return {name: dispatch_stats(idx, E, world_size, E // world_size, cfg.dim, bytes_per_elem)
            for name, idx in (("limited", limited), ("unlimited", free))}


def rank_load(load_per_expert: torch.Tensor, world_size: int) -> torch.Tensor:
    """(E,) tokens per expert -> (W,) tokens per rank under the contiguous placement EPMoE uses."""
    E = load_per_expert.numel()
    if world_size < 1 or E % world_size:
        raise ValueError(f"world_size ({world_size}) must divide the number of experts ({E})")
    return load_per_expert.float().view(world_size, E // world_size).sum(1)


class RedundantPlan(NamedTuple):
    rank_experts: torch.Tensor  # (W, S) expert id in each slot of each rank, S = (E + n_redundant) / W
    rank_load: torch.Tensor     # (W,) expected tokens per rank (an expert's load split evenly over its replicas)
    replicas: torch.Tensor      # (E,) copies of each expert (1 + its redundant copies)


def plan_redundant_experts(load_per_expert: torch.Tensor, world_size: int, n_redundant: int) -> RedundantPlan:
    """Inference-time redundant experts: replicate the hottest experts, then place all copies to even out load.

    Greedy, in two steps (the flat version of DeepSeek's EPLB idea):
      1. replicate: ``n_redundant`` times, give one more copy to the expert with the largest load per copy
         (an expert has at most W copies, one per rank);
      2. place: copies from heaviest to lightest (load / copies each), each to the least-loaded rank that has
         a free slot and does not hold that expert yet (longest-processing-time first).
    Every rank gets S = (E + n_redundant) / W slots (the report's prefill: 256 + 32 experts on 32 GPUs = 9 each).
    The resulting loads assume a token of a replicated expert goes to any of its copies with equal chance.
    """
    load = load_per_expert.detach().float().cpu()
    E = load.numel()
    if load.dim() != 1 or E == 0 or bool((load < 0).any()):
        raise ValueError(f"load_per_expert must be a non-empty 1-D tensor of non-negative loads, got {load}")
    if world_size < 1 or n_redundant < 0 or (E + n_redundant) % world_size:
        raise ValueError(f"world_size ({world_size}) must divide n_experts + n_redundant ({E} + {n_redundant})")
    if n_redundant > E * (world_size - 1):
        raise ValueError(f"n_redundant ({n_redundant}) exceeds E x (W-1) = {E * (world_size - 1)}: an expert "
                         "has at most one copy per rank")
    replicas = torch.ones(E, dtype=torch.long)
    for _ in range(n_redundant):                                   # 1. replicate the hottest (per copy)
        per_copy = (load / replicas).masked_fill(replicas >= world_size, -1.0)
        replicas[per_copy.argmax()] += 1

    slots = (E + n_redundant) // world_size
    copies = [(load[e].item() / replicas[e].item(), e) for e in range(E) for _ in range(replicas[e])]
    copies.sort(key=lambda c: (-c[0], c[1]))                       # heaviest first, ties by expert id
    held: list[list[int]] = [[] for _ in range(world_size)]
    loads = [0.0] * world_size
    for w_copy, e in copies:                                       # 2. place, least-loaded rank first
        free = [r for r in range(world_size) if len(held[r]) < slots]
        ok = [r for r in free if e not in held[r]] or free         # a second copy on one rank only if forced
        r = min(ok, key=lambda r: (loads[r], r))
        held[r].append(e)
        loads[r] += w_copy
    return RedundantPlan(torch.tensor(held, dtype=torch.long), torch.tensor(loads), replicas)


# ============================================================================ communication


def exchange_counts(send_counts: torch.Tensor, group=None) -> torch.Tensor:
    """(W,) rows this rank sends to each rank -> (W,) rows it will receive from each (a plain all-to-all)."""
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    return recv_counts


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group=None) -> torch.Tensor:
    """Autograd-aware all-to-all on rows: send ``in_splits[w]`` rows to rank w, receive ``out_splits[w]``.

    Its backward is the reverse all-to-all (torch.distributed.nn.functional). torch 2.13 marks that function
    deprecated in favour of functional collectives; it is kept for its readable autograd.Function.
    """
    out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return dist_fn.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)


def dispatch(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, plan: DispatchPlan,
             recv_counts: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Send each token once to each rank that owns one of its experts, with all K ids and weights.

    x (N, d), weights/indices (N, K) -> received x (R, d), weights (R, K), indices (R, K) (global expert ids).
    """
    send, recv = plan.send_counts.tolist(), recv_counts.tolist()
    x_recv = all_to_all(x[plan.tokens], recv, send, group)                    # (R, d)
    w_recv = all_to_all(weights[plan.tokens], recv, send, group)              # (R, K), gradients flow back
    i_send = indices[plan.tokens].contiguous()                                # (S, K)
    i_recv = i_send.new_empty(x_recv.size(0), indices.size(1))                # (R, K)
    dist.all_to_all_single(i_recv, i_send, recv, send, group=group)           # ids: no gradient
    return x_recv, w_recv, i_recv


def combine(y_recv: torch.Tensor, plan: DispatchPlan, recv_counts: torch.Tensor, n_tokens: int,
            group=None) -> torch.Tensor:
    """Reverse all-to-all: one partial sum per (token, rank) comes home; summing them per token gives (N, d)."""
    y_back = all_to_all(y_recv, plan.send_counts.tolist(), recv_counts.tolist(), group)   # (S, d)
    return y_back.new_zeros(n_tokens, y_back.size(1)).index_add_(0, plan.tokens, y_back)


# ============================================================================ the layer


@dataclass
class EPRouting(Routing):
    """``Routing`` of this rank's tokens plus what the all-to-all moved."""
    send_counts: torch.Tensor | None = None   # (W,) token copies sent to each rank
    recv_counts: torch.Tensor | None = None   # (W,) token copies received from each rank


class EPMoE(MoE):
    """DeepSeekMoE with routed experts spread over the ranks of ``group``; same math as ``MoE``.

    Replicated: the gate (weights and selection bias) and the shared experts. Local: ``experts`` holds this
    rank's E/W routed experts. Each rank feeds its own tokens (N_r, d); gradients of the replicated parts are
    this rank's share (all-reduce them, as data parallelism does); local expert gradients are complete. The
    returned load counts are this rank's: ``balance.reduce_loads`` sums them over ranks for the bias update.
    """

    def __init__(self, cfg: ModelConfig, group=None):
        super().__init__(cfg)
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        if cfg.n_routed_experts % self.world_size:
            raise ValueError(f"world_size ({self.world_size}) must divide n_routed_experts ({cfg.n_routed_experts})")
        self.experts_per_rank = cfg.n_routed_experts // self.world_size
        self.first_expert = self.rank * self.experts_per_rank
        # MoE.__init__ made all E experts (torch.empty: allocated, not initialised); keep this rank's E/W only
        self.experts = Experts(self.experts_per_rank, cfg.dim, cfg.moe_inter_dim, cfg.fp8)

    @classmethod
    def from_moe(cls, moe: MoE, group=None) -> EPMoE:
        """The EP version of a single-process ``MoE``: same gate, same shared experts, this rank's expert slice."""
        ep = cls(moe.cfg, group)
        ep.gate = copy.deepcopy(moe.gate)
        ep.shared_experts = copy.deepcopy(moe.shared_experts)
        mine = slice(ep.first_expert, ep.first_expert + ep.experts_per_rank)
        for name in ("w1", "w2", "w3"):                  # keeps the source's device and dtype
            setattr(ep.experts, name, nn.Parameter(getattr(moe.experts, name).detach()[mine].clone()))
        return ep.train(moe.training)

    def forward(self, x: torch.Tensor, return_routing: bool = False):
        """x (B, T, d) this rank's tokens -> y (B, T, d), or (y, EPRouting) with ``return_routing``."""
        B, T, d = x.shape
        flat = x.reshape(-1, d)                                                # (N, d)
        weights, indices, scores = self.gate(flat)                             # (N, K), (N, K), (N, E)
        plan = dispatch_plan(indices, self.world_size, self.experts_per_rank)
        recv_counts = exchange_counts(plan.send_counts, self.group)
        x_recv, w_recv, i_recv = dispatch(flat, weights, indices, plan, recv_counts, self.group)
        y_recv = self.local_experts(x_recv, w_recv, i_recv)                    # (R, d)
        y = combine(y_recv, plan, recv_counts, flat.size(0), self.group)       # (N, d)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        y = y.view(B, T, d)
        if not return_routing:
            return y
        # load counts and balance losses exactly as in the single-process layer, on this rank's tokens
        r = self.routing(scores, indices, B, T)
        return y, EPRouting(**vars(r), send_counts=plan.send_counts, recv_counts=recv_counts)

    def local_experts(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Received rows x (R, d) with their K global expert ids / weights -> (R, d): sum of g_i FFN_i(x) over
        the experts this rank owns. Each (row, local expert) pair is one K=1 input of ``Experts``."""
        local = indices - self.first_expert                                    # (R, K) local id if it is ours
        row, slot = ((local >= 0) & (local < self.experts_per_rank)).nonzero(as_tuple=True)   # (P,) pairs
        out = self.experts(x[row], weights[row, slot, None], local[row, slot, None])         # (P, d), weighted
        return torch.zeros_like(x).index_add_(0, row, out)


# ============================================================================ check against one process


def make_moe(cfg: ModelConfig, seed: int, std: float = 0.1) -> MoE:
    """A single-process MoE with N(0, std) weights and a non-zero selection bias (same on every rank)."""
    torch.manual_seed(seed)
    moe = MoE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, std)
        moe.gate.bias.normal_(0, 0.05)
    return moe


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b| (gradients of a summed loss are large numbers)."""
    if not a.numel():
        return 0.0
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def ep_check_worker(rank: int, world_size: int, cfg_dict: dict, batch_per_rank: int, seq_len: int,
                    seed: int = 0, hot_experts: int = 0) -> dict:
    """On each rank: run the single-process MoE on the whole batch and EPMoE on this rank's shard, then compare
    outputs and gradients. Returns max errors and what was measured (module-level: spawn pickles it).

    ``hot_experts`` > 0 gives the first experts a huge selection bias: they take every token, so the other
    ranks receive nothing but must still join both all-to-alls, forward and backward.
    """
    device = rank_device()
    cfg = ModelConfig.from_dict(cfg_dict)
    ref = make_moe(cfg, seed)
    with torch.no_grad():
        ref.gate.bias[:hot_experts] += 10.0
    ref = ref.to(device).train()
    ep = EPMoE.from_moe(ref)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(world_size * batch_per_rank, seq_len, cfg.dim, generator=g).to(device)
    target = torch.randn(x.shape, generator=g).to(device)     # loss = <y, target>: a non-uniform gradient
    mine = slice(rank * batch_per_rank, (rank + 1) * batch_per_rank)

    x_ref = x.clone().requires_grad_()
    y_ref, r_ref = ref(x_ref, return_routing=True)
    (y_ref * target).sum().backward()

    x_ep = x[mine].clone().requires_grad_()
    y_ep, r_ep = ep(x_ep, return_routing=True)
    (y_ep * target[mine]).sum().backward()
    replicated = [ep.gate.weight] + (list(ep.shared_experts.parameters()) if ep.shared_experts else [])
    for p in replicated:                                        # data-parallel sum of the replicated grads
        dist.all_reduce(p.grad)
    [load] = reduce_loads([r_ep.load])                          # global load, as the bias update needs it

    sl = slice(ep.first_expert, ep.first_expert + ep.experts_per_rank)
    err = {"output": _max_err(y_ep, y_ref[mine]), "grad_input": _max_err(x_ep.grad, x_ref.grad[mine]),
           "grad_gate": _max_err(ep.gate.weight.grad, ref.gate.weight.grad),
           "grad_experts": max(_max_err(getattr(ep.experts, n).grad, getattr(ref.experts, n).grad[sl])
                               for n in ("w1", "w2", "w3")),
           "load": _max_err(load, r_ref.load)}
    if ep.shared_experts is not None:
        err["grad_shared"] = max(_max_err(a.grad, b.grad) for a, b in
                                 zip(ep.shared_experts.parameters(), ref.shared_experts.parameters()))
    with torch.no_grad():
        _, _, scores = ep.gate(x[mine].reshape(-1, cfg.dim))                # (N_r, E) affinities, for the report
    local_indices = r_ep.indices.reshape(-1, cfg.n_activated_experts)
    return {"rank": rank, "backend": dist.get_backend(), "device": str(device), "err": err,
            "send_counts": r_ep.send_counts.cpu(), "recv_counts": r_ep.recv_counts.cpu(),
            "local_indices": local_indices.cpu(), "scores": scores.cpu(),
            "bias": ep.gate.bias.cpu() if cfg.balance == "aux_free" else None,
            "bytes_per_elem": x.element_size()}


def format_report(results: list[dict], cfg: ModelConfig) -> str:
    """What the check measured, as text: errors, bytes moved per token, ranks per token, per-rank load."""
    W, E, K = len(results), cfg.n_routed_experts, cfg.n_activated_experts
    indices = torch.cat([r["local_indices"] for r in results])                 # (N, K) all tokens
    N, elem = indices.size(0), results[0]["bytes_per_elem"]
    stats = dispatch_stats(indices, E, W, E // W, cfg.dim, elem)
    free = node_limited_comparison(torch.cat([r["scores"] for r in results]), results[0]["bias"], cfg, W,
                                   elem)["unlimited"]
    sent_rows = sum(int(r["send_counts"].sum()) for r in results)
    remote_rows = sent_rows - sum(int(r["send_counts"][r["rank"]]) for r in results)
    copies = torch.stack([r["recv_counts"].sum() for r in results])            # (W,) token copies received
    pairs = rank_load(expert_load(indices, E), W)                              # (W,) (token, expert) pairs
    bound = max_ranks_per_token(K, cfg.n_expert_groups, cfg.n_limited_groups, W)
    lines = [f"EP check: {W} ranks, backend {results[0]['backend']}, {N} tokens, {E} experts "
             f"(top-{K}, {cfg.n_expert_groups} groups, {cfg.n_limited_groups} kept), dim {cfg.dim}",
             "max |EP - single process| / max |single process|: "
             + ", ".join(f"{k} {max(r['err'][k] for r in results):.2e}" for k in results[0]["err"]),
             f"dispatch sent {sent_rows / N:.3f} copies/token = {sent_rows * cfg.dim * elem / N:.1f} bytes/token "
             f"({elem}-byte elements; dispatch_stats: {stats.bytes_per_token:.1f}; one copy per expert: "
             f"{stats.bytes_per_token_no_dedup:.1f}); {remote_rows / N:.3f} copies/token left their rank; "
             "combine sends the same rows back",
             f"ranks per token: mean {stats.mean_ranks:.3f}, max {stats.max_ranks} (guaranteed <= {bound}); "
             f"same scores without the group limit: mean {free.mean_ranks:.3f}, max {free.max_ranks}, "
             f"{free.bytes_per_token:.1f} bytes/token",
             f"per-rank load: token copies received {copies.tolist()}; (token, expert) pairs computed "
             f"{pairs.long().tolist()}, max/mean {1 + max_violation(pairs).item():.3f}"]
    if W > 1:
        plan = plan_redundant_experts(expert_load(indices, E), W, W)
        lines.append(f"with {W} redundant experts (one more slot per rank): pairs per rank "
                     f"{[round(v, 1) for v in plan.rank_load.tolist()]}, max/mean "
                     f"{1 + max_violation(plan.rank_load).item():.3f}; experts per rank {plan.rank_experts.tolist()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run EPMoE on N processes and check it against the single-process MoE.")
    p.add_argument("--world-size", type=int, default=2, help="processes to spawn (ignored under torchrun)")
    p.add_argument("--preset", default="nano", help="config preset for the MoE layer's sizes")
    p.add_argument("--batch", type=int, default=4, help="sequences per rank")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = get_config(args.preset)
    job = (cfg.to_dict(), args.batch, args.seq_len, args.seed)
    if running_under_torchrun():
        init_torchrun()
        rank, world = dist.get_rank(), dist.get_world_size()
        results = [None] * world
        dist.all_gather_object(results, ep_check_worker(rank, world, *job))
        if rank == 0:
            print(format_report(results, cfg))
        dist.destroy_process_group()
    else:
        print(format_report(spawn_run(args.world_size, ep_check_worker, *job), cfg))


if __name__ == "__main__":
    main()
