"""torch.distributed helpers: the process group of a torchrun launch, which process writes files,
collectives on plain values, and the checks ``--devices`` and ``--strategy`` get before anything
is launched.

A process is part of a distributed run when torchrun started it with a world of more than one
process (``WORLD_SIZE`` > 1 in its environment). Every process then runs the same loop in lockstep;
only rank 0 writes files or prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from mlenv.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` of ``local_size`` on
    this machine (``World(0, 1, 0, 1)`` without torch.distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1


def launched() -> bool:
    """True in a process torchrun started as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> World:
    if not initialized():
        return World()
    size = dist.get_world_size()
    rank = dist.get_rank()
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    return World(rank, size, int(os.environ.get("LOCAL_RANK", rank)), local_size)


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def is_main_process() -> bool:
    """True on rank 0 (or without torch.distributed): the one process that writes run files."""
    return rank() == 0


def process_device(device: torch.device) -> torch.device:
    """The device of this process: under torchrun on CUDA, GPU ``LOCAL_RANK``."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


_end_group: Any = None  # a gloo group without a deadline: the processes wait for rank 0 at the end


def init_process_group(device: torch.device) -> World:
    """Join the process group torchrun set up (its address and rank are in the environment):
    NCCL on CUDA, gloo on the CPU. Does nothing outside torchrun or when already joined."""
    global _end_group
    if launched() and not initialized():
        if device.type == "cuda":
            device = process_device(device)
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        elif device.type == "cpu":
            dist.init_process_group("gloo")
        else:
            raise ConfigError(f"--devices: torch.distributed has no backend for {device.type!r}")
        _end_group = dist.new_group(backend="gloo", timeout=timedelta(days=7))
    return world()


def wait_for_all() -> None:
    """Return when every process has called it: the others wait for rank 0's test evaluation
    and summary, and all leave together (a process that leaves early can take the group down)."""
    if initialized():
        dist.barrier(group=_end_group)


def shutdown() -> None:
    global _end_group
    if initialized():
        dist.destroy_process_group()
    _end_group = None


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every process (picklable values)."""
    if not initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (picklable values)."""
    if not initialized():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place; returns it."""
    if initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def fsdp_supported(device_type: str) -> bool:
    """FSDP2 (``torch.distributed.fsdp.fully_shard``) runs on CUDA with NCCL and on the CPU
    with gloo; it needs a torch that has it."""
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return device_type in ("cuda", "cpu")


def check_devices(
    devices: int, device: str, strategy: str = "ddp", cuda_count: int | None = None
) -> None:
    """``--devices N`` (processes on this machine) and ``--strategy`` must fit the device: one
    GPU per process, no torch.distributed on MPS; raises a one-line ``ConfigError``.

    >>> check_devices(2, "cpu")
    """
    if devices < 1:
        raise ConfigError(f"--devices: accepts an integer >= 1, got {devices}")
    if devices == 1 and not launched():
        if strategy == "fsdp":
            raise ConfigError(
                "--strategy fsdp: shards the model over processes; give --devices 2 or more"
            )
        return
    kind = device.split(":")[0]
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "auto":
        mps = getattr(torch.backends, "mps", None)
        kind = "cuda" if cuda_count else ("mps" if mps and mps.is_available() else "cpu")
    if kind == "mps":
        raise ConfigError(
            f"--devices {devices}: torch.distributed does not run on Apple's MPS; "
            "give --device cpu to train on several CPU processes"
        )
    if kind == "cuda":
        if ":" in device:
            raise ConfigError(
                f"--device {device}: names one GPU; with --devices {devices} give --device cuda "
                "(process i uses GPU i)"
            )
        if devices > cuda_count and not launched():
            raise ConfigError(
                f"--devices {devices}: this machine has {cuda_count} CUDA device(s); give at most "
                f"{cuda_count} (one process per GPU)"
            )
    if strategy == "fsdp" and not fsdp_supported(kind):
        raise ConfigError(
            f"--strategy fsdp: this torch ({torch.__version__}) has no FSDP2 for {kind}; "
            "use --strategy ddp"
        )


def lost_peer(exc: BaseException) -> bool:
    """Whether an error is a collective that failed because another process is gone."""
    text = str(exc)
    markers = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    return isinstance(exc, dist.DistError) or any(m in text for m in markers)
