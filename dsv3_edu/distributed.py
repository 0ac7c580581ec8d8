"""Data-parallel training (DDP) for the trainer: one process per device, the same model on each.

    torchrun --nproc_per_node 2 -m dsv3_edu train --preset nano --steps 200 --batch-size 16

What changes with W processes (``train`` calls the helpers below; with one process they do nothing):

* the **global batch** stays ``batch_size`` sequences: every rank draws the same batch (same seeded data
  stream) and keeps its own ``batch_size / W`` rows (``ShardedBatches``); so W ranks see exactly the batches
  one process would, and the data position in a checkpoint does not depend on W;
* **gradients** are averaged over ranks by ``torch.nn.parallel.DistributedDataParallel`` during backward (each
  rank's loss is the mean over its equal-sized shard, so the average is the global mean's gradient);
* the **aux-loss-free bias update** uses the expert loads summed over ranks (``balance.reduce_loads``): every
  rank applies the same sign rule to the same counts and keeps the same biases, which are buffers, not
  parameters, so DDP would not sync them;
* logged losses are averaged over ranks (``mean_over_ranks``), so the metrics equal one process's;
* **rank 0** alone writes checkpoints, metrics and plots; the saved ``train_config.json`` records
  ``world_size``. A checkpoint holds the full (replicated) model and optimizer, so a run resumes exactly on any
  number of processes.

Backends: NCCL with one GPU per rank (``cuda:LOCAL_RANK``), gloo on CPU. ``ddp_check`` runs a short training on
W processes and on one, and compares losses and weights (``python -m dsv3_edu.check`` calls it).
"""
from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistEnv:
    """Where this process stands: rank r of W (W = 1: no process group)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False           # this process created the group (torchrun) and destroys it at the end

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> tuple[DistEnv, torch.device | None]:
    """Join the process group: an existing one (``spawn_run``, a test) as it is, or, under ``torchrun``, the one
    torchrun prepared (``parallel.launch.init_torchrun``: NCCL with CUDA, else gloo). Returns (env, this rank's
    device: ``cuda:LOCAL_RANK`` with NCCL, the CPU with gloo); with no process group (DistEnv(), None), and the
    caller picks the device as for one process. (Under torchrun, ``TrainConfig.device`` is not consulted: the
    backend decides, as for the other parallel code.)
    """
    from .parallel.launch import init_torchrun, rank_device, running_under_torchrun
    owns = False
    if not (dist.is_available() and dist.is_initialized()):
        if not running_under_torchrun():
            return DistEnv(), None
        init_torchrun()
        owns = True
    device = rank_device()
    env = DistEnv(dist.get_rank(), dist.get_world_size(), device.index or 0, dist.get_backend(), owns_group=owns)
    return env, device


def cleanup(env: DistEnv) -> None:
    """Destroy the process group if ``setup`` created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def check_global_batch(batch_size: int, world_size: int) -> int:
    """Sequences per rank; a clear error when the global batch does not split evenly."""
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} (the global batch) must be divisible by the number of "
                         f"processes {world_size}: each rank takes batch_size / world_size sequences")
    return batch_size // world_size


class ShardedBatches:
    """This rank's rows of each global batch: rows [r * B/W, (r+1) * B/W) of the batch one process would draw.

    Wraps a resumable iterator of (x, y) CPU batches (``TokenDataset.random``); ``state_dict`` is the wrapped
    iterator's, the same on every rank and the same as one process's.
    """

    def __init__(self, batches, env: DistEnv, device: torch.device | None = None):
        self.batches, self.env, self.device = batches, env, device

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.batches)                                    # (B, T) each, the global batch
        b = check_global_batch(x.size(0), self.env.world_size)
        rows = slice(self.env.rank * b, (self.env.rank + 1) * b)
        return x[rows].to(self.device), y[rows].to(self.device)      # (B/W, T) each

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


def wrap_ddp(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when there are several ranks, else ``model`` itself.

    ``broadcast_buffers=False``: the buffers (selection biases, RoPE tables) are identical on every rank by
    construction (the bias update uses all-reduced loads), so there is nothing to broadcast each step.
    """
    if not env.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # newer torch renamed the switch (forward_sync_buffers; it still syncs once at init, which is harmless here)
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})
    return ddp(model, device_ids=ids, **no_sync)


def no_sync_unless(model: nn.Module, sync: bool):
    """With gradient accumulation, DDP need only all-reduce on the last micro-batch: ``model.no_sync()`` before."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def mean_over_ranks(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The mean of ``t`` over ranks (gloo has no AVG: SUM / W). ``t`` itself with one process."""
    if not env.distributed:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / env.world_size


# ============================================================================ check against one process


def _ddp_train_worker(rank: int, world_size: int, tc_dict: dict, train_tokens, val_tokens, resume_at: int = 0,
                      out_dir: str | None = None, resume: bool = True) -> dict:
    """One rank of a data-parallel run (spawn_run initialised the group); returns its history and weights.
    ``resume_at`` > 0: stop after that step (checkpoint in ``out_dir``), then, if ``resume``, resume to the end."""
    from .data import TokenDataset
    from .train import TrainConfig, train
    tc = TrainConfig.from_dict({**tc_dict, "out_dir": out_dir})
    ds = TokenDataset(train_tokens, val_tokens)
    if resume_at:
        res = train(tc, dataset=ds, progress=False, stop_after=resume_at)
        if resume:
            res = train(tc, dataset=ds, progress=False, resume=out_dir)
    else:
        res = train(tc, dataset=ds, progress=False)
    model = res.model
    return {"rank": rank, "losses": [r["loss"] for r in res.history], "device": str(next(model.parameters()).device),
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def compare_runs(reference, results: list[dict]) -> dict:
    """Max |loss difference| and max |weight difference| (weights + biases) of every rank vs the reference."""
    ref_losses = [r["loss"] for r in reference.history]
    ref_state = {k: v.detach().cpu() for k, v in reference.model.state_dict().items()}
    loss_err = max(abs(a - b) for r in results for a, b in zip(r["losses"], ref_losses, strict=True))
    w_err = max((r["state"][k].float() - v.float()).abs().max().item() for r in results for k, v in ref_state.items())
    return {"max_loss_err": loss_err, "max_weight_err": w_err}


def ddp_check(world_size: int = 2, backend: str | None = None, quick: bool = True, timeout_s: float = 120.0,
              resume_at: int = 0, out_dir: str | None = None) -> dict:
    """Train a short run on ``world_size`` processes (DDP) and on this one; compare losses and weights.

    The same global batch on both sides: nano preset, 4 sequences per step (quick) or 8, fp32 (bf16 autocast
    would make the comparison loose). ``resume_at`` > 0: the parallel run stops there and resumes from its
    checkpoint (needs ``out_dir``).
    """
    from .check import synthetic_stream
    from .config import get_config
    from .parallel.launch import pick_backend, spawn_run
    from .train import TrainConfig, train
    backend = backend or pick_backend()
    batch = 4 if quick else 8
    check_global_batch(batch, world_size)
    device = "cuda" if backend == "nccl" else "cpu"
    tc = TrainConfig(preset="nano", steps=6 if quick else 20, batch_size=batch, seq_len=32, warmup_steps=2,
                     log_every=1, eval_every=10 ** 9, eval_batches=1, dtype="fp32", mfu=False, out_dir=None,
                     plots=False, device=device, save_every=10 ** 9)
    vocab = get_config("nano").vocab_size
    stream = synthetic_stream(6000, vocab)
    train_tokens, val_tokens = stream[:5000], stream[5000:]
    from .data import TokenDataset
    ref = train(tc, dataset=TokenDataset(train_tokens, val_tokens), progress=False)
    from dataclasses import asdict
    results = spawn_run(world_size, _ddp_train_worker, asdict(tc), train_tokens, val_tokens, resume_at, out_dir,
                        backend=backend, timeout_s=timeout_s)
    errs = compare_runs(ref, results)
    same_biases = all(torch.equal(results[0]["state"][k], r["state"][k]) for r in results[1:]
                      for k in results[0]["state"] if k.endswith("gate.bias"))
    return {"world_size": world_size, "backend": backend, "device": results[0]["device"], "steps": tc.steps,
            "global_batch": batch, "tolerance": 1e-4 if backend == "nccl" else 2e-5, "resumed_at": resume_at,
            "same_biases_on_all_ranks": same_biases, **errs}
