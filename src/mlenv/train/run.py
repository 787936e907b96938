"""One recipe run from a resolved configuration: data, model, trainer, run folder, summary.

This is the whole flow of ``mlenv train``; the CLI only parses and calls ``run_recipe``.
"""

from __future__ import annotations

import inspect
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlenv.config import RunConfig
from mlenv.track.report import format_summary, format_table


@dataclass
class RunResult:
    run_dir: Path | None
    history: list[dict[str, Any]]
    summary: dict[str, Any]


def build(cfg: RunConfig) -> tuple[Any, Any, Any]:
    """The data bundle, model and Trainer class a configuration names."""
    from mlenv.data import DATASETS
    from mlenv.models import MODELS
    from mlenv.train.tasks import TRAINERS

    builder = DATASETS.get(cfg.dataset)
    data_args = dict(cfg.data)
    if "seed" in inspect.signature(builder).parameters:
        data_args["seed"] = cfg.train.seed
    bundle = DATASETS.create(cfg.dataset, **data_args)
    model_params = inspect.signature(MODELS.get(cfg.model)).parameters
    from_data = {k: v for k, v in bundle.model_kwargs.items() if k in model_params}
    model = MODELS.create(cfg.model, **from_data, **cfg.model_args)
    return bundle, model, TRAINERS.get(cfg.trainer)


def run_recipe(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    out: Any = None,
    group_id: int | None = None,
    member: str | None = None,
) -> RunResult:
    """Train ``cfg`` end to end; with ``run_dir`` (an existing run folder) continue that run.
    The run is recorded in the experiment store (``group_id``/``member`` for repeats and folds)."""
    from mlenv.errors import TrainingError
    from mlenv.runtime.seed import seed_everything
    from mlenv.track.run import Run
    from mlenv.track.store import Store
    from mlenv.track.trackers import make_trackers
    from mlenv.train.trainer import TrainingInterrupted

    out = out or sys.stdout
    c = cfg.train
    seed_everything(c.seed, c.deterministic)
    bundle, model, trainer_cls = build(cfg)
    run = store = None
    experiment = c.experiment or cfg.recipe
    if c.resume in ("last", "best") and run_dir is None:
        run_dir = latest_run(c.runs_dir, experiment, c.resume)
    if not c.fast_dev_run:
        run = Run(run_dir) if run_dir else Run.create(c.runs_dir, experiment)
        run.config_text = cfg.to_yaml()
        store = Store(c.store or Path(c.runs_dir) / "mlenv.db")
        run.store = store
        run.trackers = make_trackers(
            c.wandb, c.mlflow, experiment, run.id, cfg.to_flat(), str(run.path)
        )
    trainer = trainer_cls(c, model, run=run, run_config=cfg.to_flat(), **cfg.task_args)
    trainer.data_state = {**bundle.state, "model_kwargs": bundle.model_kwargs}
    for key, value in bundle.info.items():
        print(f"{key}: {value}", file=out)
    if store is not None:
        store.start_run(
            run.id,
            experiment,
            cfg.to_flat(),
            run_dir=str(run.path),
            recipe=cfg.recipe,
            group_id=group_id,
            member=member,
            device=str(trainer.device),
        )
    try:
        summary = _train_and_summarise(cfg, bundle, trainer, run, out)
    except TrainingInterrupted as exc:
        if store is not None:
            store.finish_run(run.id, "killed", error=str(exc))
        raise
    except BaseException as exc:
        if run is not None and isinstance(exc, TrainingError):  # e.g. a NaN loss: say why
            run.write_summary(
                {
                    "recipe": cfg.recipe,
                    "epochs": trainer.epoch,
                    "stop_reason": str(exc),
                    "status": "failed",
                    "history": trainer.history,
                }
            )
        if store is not None:
            store.finish_run(run.id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    if store is not None:
        store.finish_run(run.id, "finished", summary)
        store.close()
    return RunResult(run.path if run else None, trainer.history, summary)


def latest_run(runs_dir: str | Path, experiment: str, checkpoint: str) -> Path:
    """The newest run folder of ``experiment`` that holds ``checkpoints/<checkpoint>.pt``."""
    from mlenv.errors import CheckpointError

    folder = Path(runs_dir) / experiment
    runs = sorted(folder.glob(f"*/checkpoints/{checkpoint}.pt")) if folder.is_dir() else []
    if not runs:
        raise CheckpointError(
            f"resume: no run of experiment {experiment!r} in {runs_dir} has a "
            f"{checkpoint!r} checkpoint"
        )
    return runs[-1].parent.parent


def _train_and_summarise(
    cfg: RunConfig, bundle: Any, trainer: Any, run: Any, out: Any
) -> dict[str, Any]:
    from mlenv.track.plots import plot_loss_curve

    c = cfg.train
    started = time.time()
    result = trainer.fit(bundle.train, bundle.val)
    print(format_table(result.history), file=out)
    summary: dict[str, Any] = {
        "recipe": cfg.recipe,
        "epochs": trainer.epoch,
        "stop_reason": result.stop_reason,
        "device": str(trainer.device),
        "threads": trainer.threads,
        "seconds": round(time.time() - started, 2),
    }
    summary.update({k: v for k, v in result.last.items() if k not in ("epoch", "seconds")})
    summary["data"] = bundle.info
    if result.best:
        summary["best_" + c.monitor] = result.best[c.monitor]
    if bundle.test is not None:
        summary.update(trainer.evaluate(bundle.test))
        summary.update(trainer.report(bundle, run))
    if run is not None:
        summary["run_dir"] = str(run.path)
        summary["weights"] = str(trainer.save_weights(run.path / "model.safetensors"))
        if result.history:
            plot = plot_loss_curve(result.history, run.plots / "loss_curve.png")
            summary["loss_curve"] = str(plot)
        run.write_summary(summary)
    else:
        summary["fast_dev_run"] = "ok: one batch of train and validation ran; nothing written"
    print(file=out)
    print(format_summary(summary), file=out)
    return summary


def load_trained(weights: str, overrides: list[str] | None = None, prog: str = "mlenv") -> tuple:
    """``(trainer, config, checkpoint state, checkpoint path)`` for a trained checkpoint (a file or
    a run folder): the model is built from the checkpoint's configuration and data state (no
    training data needed); the weights are loaded by the caller after ``trainer.setup``."""
    from mlenv.config import load_recipe, resolve
    from mlenv.models import MODELS
    from mlenv.train.checkpoint import load_checkpoint, resolve_checkpoint
    from mlenv.train.tasks import TRAINERS

    path = resolve_checkpoint(weights, None)
    state = load_checkpoint(path)
    base = dict(state["config"])
    argv = ["--progress", "false", *(overrides or [])]
    cfg = resolve(load_recipe(base["recipe"]), argv, prog=prog, base=base)
    data_state = state.get("extra", {}).get("data", {})
    params = inspect.signature(MODELS.get(cfg.model)).parameters
    from_data = {k: v for k, v in data_state.get("model_kwargs", {}).items() if k in params}
    model = MODELS.create(cfg.model, **from_data, **cfg.model_args)
    trainer = TRAINERS.get(cfg.trainer)(cfg.train, model, **cfg.task_args)
    trainer.data_state = data_state
    return trainer, cfg, state, path


def predict_csv(
    weights: str, data: str, out: str, no_header: bool | None, overrides: list[str] | None = None
) -> tuple[int, float | None]:
    """Write ``line,probability,predicted[,label]`` for every row of ``data`` with a trained
    tabular model; returns the row count and the accuracy when the file has labels."""
    import numpy as np
    import pandas as pd
    import torch

    from mlenv.data.tabular import read_for_prediction
    from mlenv.errors import ConfigError
    from mlenv.train.checkpoint import atomic_write_bytes, load_model_state

    trainer, cfg, state, path = load_trained(weights, overrides, "mlenv predict")
    data_state = trainer.data_state
    if data_state.get("kind") != "tabular":
        raise ConfigError(f"predict: {path} was not trained on a tabular CSV")
    header_off = cfg.data.get("no_header", False) if no_header is None else no_header
    x, lines, labels = read_for_prediction(data, data_state, header_off)
    features = torch.tensor(x, dtype=torch.float32)
    trainer.setup(features[:1], 1)
    load_model_state(trainer.raw_model, state["model"], path)
    probability = trainer.predict((features,)).numpy()
    values = np.array(data_state["label_values"])
    threshold = getattr(trainer, "threshold", 0.5)
    table = pd.DataFrame(
        {
            "line": lines,
            "probability": probability,
            "predicted": values[(probability > threshold).astype(int)],
        }
    )
    accuracy = None
    if labels is not None:
        table["label"] = labels
        accuracy = float((table["predicted"] == table["label"]).mean())
    atomic_write_bytes(out, table.to_csv(index=False, float_format="%.8g").encode())
    return len(table), accuracy
