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
