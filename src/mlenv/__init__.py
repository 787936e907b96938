"""mlenv: a PyTorch research workbench.

The public names below are imported lazily, so ``import mlenv`` (and ``mlenv --help``) stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BaseModel": "mlenv.train.base",
    "Trainer": "mlenv.train.trainer",
    "FitResult": "mlenv.train.trainer",
    "TrainConfig": "mlenv.config",
    "register_model": "mlenv.models",
    "create_model": "mlenv.models",
    "register_dataset": "mlenv.data",
    "DataBundle": "mlenv.data",
    "Run": "mlenv.track.run",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlenv' has no attribute {name!r}")
