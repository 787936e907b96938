"""Model families, one per file, each registered by name: ``create_model("mlp", in_features=20)``."""

from __future__ import annotations

from typing import Any

from mlenv.registry import Registry

MODELS = Registry("model", ("mlenv.models.mlp", "mlenv.models.vae", "mlenv.models.rnn"))
register_model = MODELS.register


def create_model(name: str, **overrides: Any) -> Any:
    """Build a registered model and initialise it once (``init_weights``); unset arguments keep
    the builder's defaults. Seed first for reproducible weights: the Trainer never re-initialises
    a model it is given."""
    model = MODELS.create(name, **overrides)
    if hasattr(model, "init_weights"):
        model.init_weights()
    return model


__all__ = ["MODELS", "create_model", "register_model"]
