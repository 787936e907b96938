"""The model contract every mlenv model follows."""

from __future__ import annotations

from torch import nn


class BaseModel(nn.Module):
    """An ``nn.Module`` with ``forward()``, a ``dim`` property (output width) and ``init_weights()``.

    ``init_weights()`` is called once, when the model is built (``create_model``, or the recipe
    runner after seeding), so a run's initial weights depend only on its seed; the Trainer never
    calls it, so a model with loaded weights keeps them. The default re-runs every submodule's own
    ``reset_parameters``.
    """

    @property
    def dim(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define the `dim` property")

    def init_weights(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's model inside whatever wraps it for training: ``torch.compile``'s
    ``_orig_mod`` and ``DistributedDataParallel``'s ``module`` (in any order, any depth), so a
    task can read the model's own attributes (``output``, ``null_label``) under ``--compile``
    and ``--devices N`` alike.

    >>> from torch.nn.parallel import DistributedDataParallel  # doctest: +SKIP
    """
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            return model
