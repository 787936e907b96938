"""torch.distributed helpers: which process writes files."""

from __future__ import annotations

import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0 (or without torch.distributed): the one process that writes run files."""
    return rank() == 0
