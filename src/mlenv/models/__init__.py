"""Model families, one per file, each registered by name: ``create_model("mlp", in_features=20)``."""

from __future__ import annotations

from typing import Any

from mlenv.registry import Registry

MODELS = Registry(
    "model",
    (
        "mlenv.models.mlp",
        "mlenv.models.cnn",
        "mlenv.models.resnet",
        "mlenv.models.vae",
        "mlenv.models.hvae",
        "mlenv.models.rnn",
        "mlenv.models.unet",
        "mlenv.models.gpt",
        "mlenv.models.bert",
        "mlenv.models.vit",
    ),
)
register_model = MODELS.register


def create_model(name: str, *, seed: int | None = None, **overrides: Any) -> Any:
    """Build a registered model and initialise it once (``init_weights``); unset arguments keep
    the builder's defaults. With ``seed`` the initial weights depend on it alone (the global RNG
    is left as it was); without it they come from the global RNG. The Trainer never
    re-initialises a model it is given.

    >>> a = create_model("mlp", seed=0, in_features=4, out_features=2)
    >>> b = create_model("mlp", seed=0, in_features=4, out_features=2)
    >>> bool((a.net[0].weight == b.net[0].weight).all())
    True
    """
    import torch

    def build() -> Any:
        model = MODELS.create(name, **overrides)
        if hasattr(model, "init_weights"):
            model.init_weights()
        return model

    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


__all__ = ["MODELS", "create_model", "register_model"]
