"""Where and how a run executes: device, seeds and determinism, threads, torch.distributed."""

from mlenv.runtime.device import choose_device
from mlenv.runtime.seed import capture_rng_state, restore_rng_state, seed_everything
from mlenv.runtime.threads import choose_threads

__all__ = [
    "capture_rng_state",
    "choose_device",
    "choose_threads",
    "restore_rng_state",
    "seed_everything",
]
