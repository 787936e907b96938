"""The model contract every mlenv model follows."""

from __future__ import annotations

from torch import nn


class BaseModel(nn.Module):
    """An ``nn.Module`` with ``forward()``, a ``dim`` property (output width) and ``init_weights()``.

    The Trainer calls ``init_weights()`` once at set-up (after seeding), so a run's initial weights
    depend only on its seed. The default re-runs every submodule's own ``reset_parameters``.
    """

    @property
    def dim(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define the `dim` property")

    def init_weights(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
