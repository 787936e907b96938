"""Model families, one per file, each registered by name: ``create_model("mlp", in_features=20)``."""

from __future__ import annotations

from typing import Any

from mlenv.registry import Registry

MODELS = Registry("model", ("mlenv.models.mlp", "mlenv.models.vae", "mlenv.models.rnn"))
register_model = MODELS.register


def create_model(name: str, **overrides: Any) -> Any:
    """Build a registered model; unset arguments keep the builder's defaults."""
    return MODELS.create(name, **overrides)


__all__ = ["MODELS", "create_model", "register_model"]
