"""Regression: mean squared error between the model's output and the target.

The loss is the metric (``val_loss``, ``test_loss``: the MSE over the split). After the test
evaluation of a recipe run with one input feature, ``report`` draws the fitted curve over the
test points (``plots/fit.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlenv.train.tasks import Task, register_task, split_batch


@register_task("regression")
class RegressionTask(Task):
    """Regression: the mean squared error between the output and the target (``nn.MSELoss``).

    The target has the output's shape: (B, out_features), or (B, N, out_features) for batches
    that are each a set of N points (``book-sine``)."""

    def get_criterion(self, model: nn.Module | None = None) -> Any:
        return self.criterion or nn.MSELoss()

    def report(self, trainer: Any, bundle: Any, run: Any) -> dict[str, Any]:
        """The fitted curve over the test points when the input is one number (else nothing)."""
        x_test, y_test = split_batch(bundle.test) if bundle.test is not None else (None, None)
        one_number = isinstance(x_test, torch.Tensor) and x_test.ndim >= 2 and x_test.shape[-1] == 1
        if run is None or not one_number or y_test is None or y_test.shape[-1] != 1:
            return {}
        x_test, y_test = x_test.reshape(-1, 1), y_test.reshape(-1, 1)  # (N, 1): one point a row
        return {"fit_plot": str(plot_fit(trainer, x_test, y_test, run.plots / "fit.png"))}


def plot_fit(trainer: Any, x: torch.Tensor, y: torch.Tensor, path: Path) -> Path:
    """The test points and the model's prediction over their x range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlenv.track.plots import save_figure

    grid = torch.linspace(float(x.min()), float(x.max()), 200).reshape(-1, 1)  # (200, 1)
    prediction = trainer.predict(grid)  # (200, out)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(x[:, 0].numpy(), y[:, 0].numpy(), s=10, label="test points")
    ax.plot(grid[:, 0].numpy(), prediction[:, 0].numpy(), color="red", label="model")
    ax.set(xlabel="x", ylabel="y", title="regression fit on the test split")
    ax.legend()
    return save_figure(fig, path)
