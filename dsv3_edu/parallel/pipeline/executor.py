"""Run a pipeline schedule for real: one process per rank, torch.distributed point-to-point.

Each rank plays its list of ``Op`` from ``schedules.py`` in order:
- F  receives the stage input (or takes the micro-batch on stage 0), runs the stage module, sends
     the output to the rank of the next stage (on the last stage: computes the loss instead);
- B  receives dL/d(output), computes only dL/d(input) (``split_backward.backward_input``) and sends it
     to the rank of the previous stage; W later adds the weight gradients (``backward_weight``);
- BW the ordinary backward; FB an F and a BW of two micro-batches, run one after the other here
     (a real F&B overlaps one's communication with the other's compute, see the reference's
     ``overlapped_forward_backward``; on CPU processes there is nothing to overlap).

Messages. Every rank computes the whole schedule, so it knows which rank produces each message and
in which order that rank sends. For every ordered pair of ranks (src -> dst) there is one process
group used only for that direction; sends are non-blocking and happen right after the compute, and
the receiver reads the channel in the sender's order, keeping early messages until they are needed.
This needs no tags (NCCL has none) and cannot deadlock when ``check_schedule`` passes. All messages
have one shape and dtype: stage modules map (micro_batch, ..., dim) to the same shape.

The loss of micro-batch m is ``loss_fn(output, target[m]) / n_micro``: the gradients equal those of
the mean loss of a single-process run over the same micro-batches.

Launch (``dsv3_edu.parallel.launch``): ``spawn_run(world_size, fn, ...)`` for notebooks and tests (loopback
address, free port), or ``torchrun --nproc_per_node 4 -m dsv3_edu.parallel.pipeline --method zb1p`` (``main``).
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..launch import init_torchrun, rank_device, spawn_run  # noqa: F401  (spawn_run: re-exported for callers)
from .schedules import Op, check_schedule, make_schedule, n_stages_of
from .split_backward import backward_full, backward_input, backward_weight

# ----------------------------------------------------------------------------- stage modules


def mlp_stage(dim: int, n_layers: int = 2, hidden_mult: int = 2) -> nn.Module:
    """The default stage: ``n_layers`` x (Linear(dim, h), GELU, Linear(h, dim)) in an nn.Sequential."""
    layers: list[nn.Module] = []
    for _ in range(n_layers):
        layers += [nn.Linear(dim, hidden_mult * dim), nn.GELU(), nn.Linear(hidden_mult * dim, dim)]
    return nn.Sequential(*layers)


class LayerStack(nn.Module):
    """A stage made of layers called as ``layer(x, *extra)``, e.g. Transformer Blocks with ``freqs_cis``.

    Tensor extras are kept as (non-persistent) buffers so ``.to(device)`` moves them with the stage.
    """

    def __init__(self, layers: list[nn.Module], *extra):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.n_extra = len(extra)
        for i, e in enumerate(extra):
            if isinstance(e, torch.Tensor):
                self.register_buffer(f"extra{i}", e, persistent=False)
            else:
                setattr(self, f"extra{i}", e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # (B, T, dim) -> (B, T, dim)
        extra = [getattr(self, f"extra{i}") for i in range(self.n_extra)]
        for layer in self.layers:
            x = layer(x, *extra)
        return x


def build_stage(stage: int, factory: Callable[[int], nn.Module] | None = None, dim: int = 16,
                seed: int = 0) -> nn.Module:
    """Stage ``stage`` of the model, built under its own seed so every rank builds identical copies.

    ``factory(stage) -> nn.Module`` plugs in any stage (e.g. a few Transformer Blocks wrapped in a
    module whose forward takes only x); the default is ``mlp_stage(dim)``.
    """
    torch.manual_seed(seed * 1000 + stage)
    return factory(stage) if factory is not None else mlp_stage(dim)


def build_stages(n_stages: int, factory: Callable[[int], nn.Module] | None = None, dim: int = 16,
                 seed: int = 0) -> list[nn.Module]:
    """All ``n_stages`` stages (the single-process model is ``nn.Sequential(*build_stages(...))``)."""
    if n_stages < 1:
        raise ValueError(f"n_stages must be >= 1, got {n_stages}")
    return [build_stage(s, factory, dim, seed) for s in range(n_stages)]


def stages_of_rank(schedule: list[list[Op]], rank: int) -> list[int]:
    """The stages rank ``rank`` computes (DualPipe: r and pp-1-r; DualPipeV: r and 2pp-1-r)."""
    return sorted({p.stage for op in schedule[rank] for p in op.parts()})


# ----------------------------------------------------------------------------- messages

def _producers_and_consumers(schedule: list[list[Op]]):
    """event -> producing rank, and event -> consuming rank (None: nobody, e.g. the last forward)."""
    n_stages = n_stages_of(schedule)
    rank_of: dict[tuple, int] = {}
    for r, ops in enumerate(schedule):
        for op in ops:
            for p in op.parts():
                if p.kind != "W":
                    rank_of[("F" if p.kind == "F" else "B", p.mb, p.stage)] = r

    def consumer(event):
        kind, m, s = event
        if kind == "F":   # the forward output of stage s feeds the forward of stage s + 1
            return rank_of[("F", m, s + 1)] if s + 1 < n_stages else None
        return rank_of[("B", m, s - 1)] if s > 0 else None   # dL/dx of stage s feeds backward of s - 1
    return rank_of, consumer


class P2P:
    """Point-to-point channels of one rank, ordered by the sender's schedule (see module docstring)."""

    def __init__(self, schedule: list[list[Op]], rank: int, shape, dtype, device, groups: dict):
        self.rank, self.shape, self.dtype, self.device, self.groups = rank, tuple(shape), dtype, device, groups
        self.producer, self.consumer = _producers_and_consumers(schedule)
        self.incoming: dict[int, list[tuple]] = defaultdict(list)    # src -> events in send order
        for src, ops in enumerate(schedule):
            for op in ops:
                for p in op.parts():
                    if p.kind in ("F", "B", "BW"):
                        e = ("F" if p.kind == "F" else "B", p.mb, p.stage)
                        if self.consumer(e) == rank and src != rank:
                            self.incoming[src].append(e)
        for src in self.incoming:
            if (src, rank) not in groups:
                raise ValueError(f"no process group for channel {src} -> {rank}: pass pairs to make_p2p_groups")
        for dst in {self.consumer(e) for e in self.producer if self.producer[e] == rank} - {None, rank}:
            if (rank, dst) not in groups:
                raise ValueError(f"no process group for channel {rank} -> {dst}: pass pairs to make_p2p_groups")
        self.next_in = defaultdict(int)
        self.arrived: dict[tuple, torch.Tensor] = {}
        self.in_flight: list = []

    def send(self, event: tuple, t: torch.Tensor) -> None:
        dst = self.consumer(event)
        if dst is None:
            return
        t = t.detach().contiguous()
        if dst == self.rank:                                 # DualPipeV's turn: same rank, no message
            self.arrived[event] = t
            return
        if tuple(t.shape) != self.shape or t.dtype != self.dtype:
            raise ValueError(f"p2p tensor for {event} has shape {tuple(t.shape)} {t.dtype}, "
                             f"expected {self.shape} {self.dtype}: stages must keep the hidden shape")
        self.in_flight.append((dist.isend(t, dst, group=self.groups[(self.rank, dst)]), t))

    def recv(self, event: tuple) -> torch.Tensor:
        src = self.producer[event]
        while event not in self.arrived:                     # read the channel in the sender's order
            e = self.incoming[src][self.next_in[src]]
            self.next_in[src] += 1
            buf = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            dist.recv(buf, src, group=self.groups[(src, self.rank)])
            self.arrived[e] = buf
        return self.arrived.pop(event)

    def finish(self) -> None:
        for work, _ in self.in_flight:
            work.wait()
        self.in_flight.clear()


def make_p2p_groups(world_size: int, pairs=None) -> dict[tuple[int, int], dist.ProcessGroup]:
    """One process group per ordered pair (src, dst), default: neighbours and the DualPipe partners.

    Collective: every rank must call it with the same arguments, in the same order.
    """
    if pairs is None:
        pairs = [(r, r + 1) for r in range(world_size - 1)]
        pairs += [(r, world_size - 1 - r) for r in range(world_size // 2) if world_size - 1 - r != r + 1]
    groups = {}
    for a, b in sorted({tuple(sorted(p)) for p in pairs}):
        groups[(a, b)] = dist.new_group([a, b])
        groups[(b, a)] = dist.new_group([a, b])
    return groups


# ----------------------------------------------------------------------------- one rank's step

class StageRunner:
    """Plays one rank's ops. ``modules[stage]`` is this rank's copy of that stage."""

    def __init__(self, schedule: list[list[Op]], rank: int, modules: dict[int, nn.Module], p2p: P2P,
                 loss_fn: Callable = F.mse_loss):
        self.schedule, self.rank, self.modules, self.p2p, self.loss_fn = schedule, rank, modules, p2p, loss_fn
        self.n_stages = n_stages_of(schedule)
        self.n_micro = len({p.mb for ops in schedule for op in ops for p in op.parts()})
        self.saved: dict[tuple, tuple] = {}        # (mb, stage) -> (x, y): alive from F to B
        self.work: dict[tuple, object] = {}        # (mb, stage) -> what W needs: alive from B to W
        missing = set(stages_of_rank(schedule, rank)) - set(modules)
        if missing:
            raise ValueError(f"rank {rank} runs stages {sorted(missing)} but has no module for them")

    def forward(self, p: Op, inputs, targets) -> torch.Tensor | None:
        key = (p.mb, p.stage)
        if p.stage == 0:
            x = inputs[p.mb]                                       # (mb, ..., dim) or token ids
        else:
            x = self.p2p.recv(("F", p.mb, p.stage - 1)).requires_grad_(True)   # a leaf: B's target
        y = self.modules[p.stage](x)
        loss = None
        if p.stage == self.n_stages - 1:
            y = loss = self.loss_fn(y, targets[p.mb]) / self.n_micro
        else:
            self.p2p.send(("F", p.mb, p.stage), y)
        self.saved[key] = (x, y)
        return loss

    def backward(self, p: Op) -> None:
        """B (input grad now, W later) or BW (both now); sends dL/dx to the previous stage."""
        x, y = self.saved.pop((p.mb, p.stage))
        grad_y = None if p.stage == self.n_stages - 1 else self.p2p.recv(("B", p.mb, p.stage + 1))
        params = list(self.modules[p.stage].parameters())
        if p.kind == "B":
            dx, self.work[(p.mb, p.stage)] = backward_input(y, grad_y, x, params)
        else:
            dx = backward_full(y, grad_y, x, params)
        if p.stage > 0:
            self.p2p.send(("B", p.mb, p.stage), dx)

    def weight(self, p: Op) -> None:
        backward_weight(self.work.pop((p.mb, p.stage)), list(self.modules[p.stage].parameters()))

    def run(self, inputs, targets) -> torch.Tensor:
        """One training step; returns the sum of this rank's (scaled) micro-batch losses."""
        total = torch.zeros((), device=self.p2p.device)
        for op in self.schedule[self.rank]:
            for p in op.parts():                                   # FB: F then BW
                if p.kind == "F":
                    loss = self.forward(p, inputs, targets)
                    if loss is not None:
                        total = total + loss.detach()
                elif p.kind in ("B", "BW"):
                    self.backward(p)
                else:
                    self.weight(p)
        self.p2p.finish()
        if self.saved or self.work:
            raise RuntimeError(f"rank {self.rank}: step ended with unfinished micro-batches "
                               f"{sorted(self.saved) + sorted(self.work)}")
        return total


def sync_dualpipe_grads(modules: dict[int, nn.Module], rank: int, world_size: int, groups: dict) -> None:
    """DualPipe keeps two copies of every stage (rank r and rank pp-1-r): sum their gradients.

    Rank r's chunk-0 stage is stage r; its partner pp-1-r holds stage r as its chunk 1. The smaller
    rank reduces its chunk 0 first, the larger its chunk 1 first, so the calls pair up.
    """
    partner = world_size - 1 - rank
    own, other = rank, partner                     # stage ids of chunk 0 and chunk 1 on this rank
    order = [own, other] if rank < partner else [other, own]
    for stage in order:
        for p in modules[stage].parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, group=groups[(min(rank, partner), max(rank, partner))])


# ----------------------------------------------------------------------------- the demo step

def make_data(n_micro: int, micro_batch: int = 2, seq: int = 4, dim: int = 16, seed: int = 0):
    """Random inputs and regression targets, one (micro_batch, seq, dim) tensor per micro-batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_micro, micro_batch, seq, dim, generator=g)
    y = torch.randn(n_micro, micro_batch, seq, dim, generator=g)
    return list(x), list(y)


def reference_step(stages: list[nn.Module], inputs, targets, loss_fn: Callable = F.mse_loss) -> float:
    """The single-process run: mean loss over the micro-batches, gradients accumulated in ``stages``."""
    model = nn.Sequential(*stages)
    total = 0.0
    for x, y in zip(inputs, targets):
        loss = loss_fn(model(x), y) / len(inputs)
        loss.backward()
        total += loss.item()
    return total


def pipeline_step(rank: int, world_size: int, method: str, n_micro: int, dim: int = 16, micro_batch: int = 2,
                  seq: int = 4, seed: int = 0, factory: Callable | None = None, groups: dict | None = None) -> dict:
    """One training step of ``method`` on this rank (inside an initialised process group).

    ``groups`` from ``make_p2p_groups`` (made here if None). Returns {"loss": mean loss (same on
    every rank), "grads": {stage: [grad per parameter]}} with DualPipe's two copies already summed.
    """
    schedule = make_schedule(method, world_size, n_micro)
    check_schedule(schedule)
    device = rank_device()
    modules = {s: build_stage(s, factory, dim, seed).to(device) for s in stages_of_rank(schedule, rank)}
    inputs, targets = make_data(n_micro, micro_batch, seq, dim, seed)
    inputs, targets = [t.to(device) for t in inputs], [t.to(device) for t in targets]
    groups = groups or make_p2p_groups(world_size)
    p2p = P2P(schedule, rank, inputs[0].shape, inputs[0].dtype, device, groups)
    loss = StageRunner(schedule, rank, modules, p2p).run(inputs, targets)
    if method == "dualpipe":
        sync_dualpipe_grads(modules, rank, world_size, groups)
    dist.all_reduce(loss)
    return {"loss": loss.item(), "grads": {s: [p.grad.detach().cpu() for p in m.parameters()]
                                           for s, m in modules.items()}}


def pipeline_steps(rank: int, world_size: int, methods, n_micro_of: dict, **kw) -> dict:
    """``pipeline_step`` for several methods in the same processes: {method: result}."""
    groups = make_p2p_groups(world_size)
    return {m: pipeline_step(rank, world_size, m, n_micro_of[m], groups=groups, **kw) for m in methods}


def max_grad_error(result: dict, n_micro: int, n_stages: int, dim: int = 16, micro_batch: int = 2,
                   seq: int = 4, seed: int = 0, factory: Callable | None = None) -> tuple[float, float]:
    """(|loss - reference loss|, max |grad - reference grad|) for one rank's ``pipeline_step`` result."""
    stages = build_stages(n_stages, factory, dim, seed)
    inputs, targets = make_data(n_micro, micro_batch, seq, dim, seed)
    ref_loss = reference_step(stages, inputs, targets)
    err = 0.0
    for s, grads in result["grads"].items():
        for g, p in zip(grads, stages[s].parameters()):
            err = max(err, (g - p.grad).abs().max().item())
    return abs(result["loss"] - ref_loss), err


def main(argv=None) -> None:
    """torchrun entry point: run one step of --method and compare with a single-process run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="zb1p", choices=["1f1b", "zb1p", "dualpipe", "dualpipev"])
    ap.add_argument("--n-micro", type=int, default=None, help="micro-batches (default 2*world_size)")
    ap.add_argument("--dim", type=int, default=16)
    args = ap.parse_args(argv)
    backend = init_torchrun()
    rank, world = dist.get_rank(), dist.get_world_size()
    n_micro = args.n_micro or 2 * world
    try:
        res = pipeline_step(rank, world, args.method, n_micro, dim=args.dim)
        n_stages = 2 * world if args.method == "dualpipev" else world
        dloss, dgrad = max_grad_error(res, n_micro, n_stages, dim=args.dim)
        errs = torch.tensor([dloss, dgrad], device=rank_device())
        dist.all_reduce(errs, op=dist.ReduceOp.MAX)
        if rank == 0:
            print(f"{args.method}: pp={world} n_micro={n_micro} backend={backend} loss={res['loss']:.6f} "
                  f"|loss - single process|={errs[0].item():.2e} max |grad - single process|={errs[1].item():.2e}")
    finally:
        dist.destroy_process_group()
