"""Starting processes for the parallel code (pipeline executor, expert parallelism): one place for the backend
choice (NCCL with CUDA GPUs, else gloo), each rank's device, and the two ways to launch.

- ``spawn_run(world_size, fn, *args)`` for notebooks and tests: fresh processes on this machine (loopback
  address, a free port), ``fn(rank, world_size, *args)`` on each, their results returned in rank order.
- ``init_torchrun()`` inside a ``torchrun --nproc-per-node N -m ...`` entry point (torchrun sets RANK,
  WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT).
"""
from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def pick_backend() -> str:
    """NCCL when there are CUDA devices, else gloo."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def rank_device() -> torch.device:
    """This process's device, once the process group is up: cuda:LOCAL_RANK under NCCL (made the current CUDA
    device), else the CPU. torchrun sets LOCAL_RANK; ``spawn_run`` (one node) sets it to the rank."""
    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count())))
    torch.cuda.set_device(device)
    return device


def running_under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_torchrun() -> str:
    """Join the process group torchrun prepared (pick_backend; NCCL: one GPU per local rank). Returns the backend."""
    backend = pick_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return backend


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(rank: int, world_size: int, port: int, backend: str, timeout_s: float, out_dir: str, fn, args,
                 kwargs) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")            # keep gloo's traffic on the loopback device
    os.environ["LOCAL_RANK"] = str(rank)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    torch.set_num_threads(1)                                     # P processes share the cores
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    try:
        result = fn(rank, world_size, *args, **kwargs)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears the group down while another is still joining
    finally:
        dist.destroy_process_group()


def spawn_run(world_size: int, fn: Callable, *args, backend: str | None = None, timeout_s: float = 120.0,
              **kwargs) -> list:
    """Run ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` fresh processes; return their results.

    Uses torch.multiprocessing.spawn, the loopback address and a free port. ``fn`` must be
    importable (defined in a module, not in a notebook cell) and its result picklable. A rank that
    waits more than ``timeout_s`` for a message fails instead of hanging.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    backend = backend or pick_backend()
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"nccl needs one GPU per rank: world_size={world_size} > {torch.cuda.device_count()} GPUs")
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_spawn_entry, args=(world_size, free_port(), backend, timeout_s, out_dir, fn, args, kwargs),
                 nprocs=world_size)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
