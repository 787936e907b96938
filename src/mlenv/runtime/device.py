"""Device choice: CUDA, then Apple's MPS, then the CPU, unless the user names one."""

from __future__ import annotations

import torch

from mlenv.errors import ConfigError


def choose_device(requested: str = "auto") -> torch.device:
    """Return the device to run on.

    >>> choose_device("cpu")
    device(type='cpu')
    """
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: 'mps' was asked for but MPS is not available")
    return device
