"""Optional trackers beside TensorBoard: Weights & Biases and MLflow, used when installed."""

from __future__ import annotations

import importlib
from typing import Any

from mlenv.errors import ConfigError

INSTALL = {"wandb": "pip install wandb", "mlflow": "pip install mlflow"}


def _require(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"--{name}: the {name} package is not installed; install it with `{INSTALL[name]}` "
            f"(or `pip install 'mlenv[{name}]'`)"
        ) from None


class WandbTracker:
    def __init__(self, experiment: str, run_id: str, config: dict[str, Any], folder: str) -> None:
        wandb = _require("wandb")
        self.run = wandb.init(project=experiment, name=run_id, config=config, dir=folder)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, experiment: str, run_id: str, config: dict[str, Any], folder: str) -> None:
        self.mlflow = _require("mlflow")
        self.mlflow.set_experiment(experiment)
        self.mlflow.start_run(run_name=run_id)
        self.mlflow.log_params({k: str(v) for k, v in config.items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def make_trackers(
    wandb: bool, mlflow: bool, experiment: str, run_id: str, config: dict[str, Any], folder: str
) -> list[Any]:
    trackers: list[Any] = []
    if wandb:
        trackers.append(WandbTracker(experiment, run_id, config, folder))
    if mlflow:
        trackers.append(MlflowTracker(experiment, run_id, config, folder))
    return trackers
