"""One recipe run from a resolved configuration: data, model, task, trainer, run session, summary;
and ``load_run``, the one loader of a trained run that test, predict, export, bench and resume use.

This is the whole flow of ``mlenv train``; the CLI only parses and calls ``run_recipe``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlenv.config import RunConfig
from mlenv.errors import ConfigError
from mlenv.track.report import format_summary, format_table


@dataclass
class RunResult:
    run_dir: Path | None
    history: list[dict[str, Any]]
    summary: dict[str, Any]


def build_data(cfg: RunConfig) -> Any:
    """The data bundle a configuration names."""
    from mlenv.data import DATASETS

    builder = DATASETS.get(cfg.dataset)
    data_args = dict(cfg.data)
    if "seed" in inspect.signature(builder).parameters:
        data_args["seed"] = cfg.train.seed
    return DATASETS.create(cfg.dataset, **data_args)


def build_model(cfg: RunConfig, model_kwargs: dict[str, Any]) -> Any:
    """The model a configuration names, with the arguments the data determines, initialised once
    (``init_weights``) from the current RNG state."""
    from mlenv.models import MODELS

    params = inspect.signature(MODELS.get(cfg.model)).parameters
    from_data = {k: v for k, v in model_kwargs.items() if k in params}
    model = MODELS.create(cfg.model, **from_data, **cfg.model_args)
    if hasattr(model, "init_weights"):
        model.init_weights()
    return model


def build_task(cfg: RunConfig) -> Any:
    """The recipe's task; a task that reads the images' range (``data_scale``: diffusion's
    clamps and pictures) gets the data set's ``--scale``, its default where the recipe sets none."""
    from mlenv.data import DATASETS
    from mlenv.train.tasks import TASKS

    args = dict(cfg.task_args)
    if "data_scale" in inspect.signature(TASKS.get(cfg.trainer)).parameters:
        data_params = inspect.signature(DATASETS.get(cfg.dataset)).parameters
        if "scale" in cfg.data:
            args["data_scale"] = cfg.data["scale"]
        elif "scale" in data_params:
            args["data_scale"] = data_params["scale"].default
    return TASKS.create(cfg.trainer, **args)


def build(cfg: RunConfig) -> tuple[Any, Any, Any]:
    """The data bundle, model and task a configuration names (seeded: same seed, same model)."""
    from mlenv.runtime.seed import seed_everything

    seed_everything(cfg.train.seed, cfg.train.deterministic)
    bundle = build_data(cfg)
    return bundle, build_model(cfg, bundle.model_kwargs), build_task(cfg)


def check_resume_overrides(stored: dict[str, Any], cfg: RunConfig, path: Path) -> None:
    """A resumed run may change only what does not alter the checkpoint's meaning (epochs,
    patience, logging, device, ...). Anything else (optimizer, lr, batch size, model or data
    arguments) is refused before anything is written."""
    from mlenv.train.trainer import RESUMABLE_FIELDS

    new = cfg.to_flat()
    changed = [
        key
        for key, value in new.items()
        if key not in RESUMABLE_FIELDS and key in stored and stored[key] != value
    ]
    changed = [k for k in changed if k not in ("recipe", "experiment")]
    if changed:
        shown = ", ".join(f"{k} ({stored[k]!r} -> {new[k]!r})" for k in changed)
        raise ConfigError(
            f"resume: {path} was trained with other values; cannot change on resume: {shown}. "
            f"Allowed on resume: {', '.join(RESUMABLE_FIELDS)} (start a new run to change others)"
        )


def run_recipe(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    out: Any = None,
    group_id: int | None = None,
    member: str | None = None,
    trackers: list[Any] | None = None,
) -> RunResult:
    """Train ``cfg`` end to end; with ``run_dir`` (an existing run folder) continue that run.
    The run is recorded in the experiment store (``group_id``/``member`` for repeats and folds).
    ``trackers`` get every epoch's metrics beside W&B/MLflow (a sweep's pruner is one).
    Everything that can be checked (configuration, data, a resumed checkpoint, the monitored
    metric) is checked before the run folder is created or touched."""
    from mlenv.runtime import distributed
    from mlenv.track.run import Run
    from mlenv.track.session import RunSession
    from mlenv.track.store import Store
    from mlenv.track.trackers import make_trackers
    from mlenv.train.trainer import Trainer

    if cfg.train.devices > 1 and not distributed.launched():
        return launch_recipe(cfg, run_dir, out, group_id, member, trackers)
    out = out or sys.stdout
    cfg, world = join_launch(cfg)
    if world.rank > 0:  # rank 0 prints and writes; the others train in lockstep
        out = io.StringIO()
    c = cfg.train
    experiment = c.experiment or cfg.recipe
    cfg, run_dir, checkpoint, resume_path = locate_run(cfg, run_dir)
    c = cfg.train
    bundle, model, task = build(cfg)
    run = None
    if not c.fast_dev_run:
        run = Run(run_dir) if run_dir else Run.plan(c.runs_dir, experiment)
        if world.size > 1:  # the folder rank 0 named (each process would draw its own id)
            run = Run(distributed.broadcast_object(str(run.path)))
    trainer = Trainer(c, model, task=task, run=run, run_config=cfg.to_flat())
    trainer.data_state = {**bundle.state, "model_kwargs": bundle.model_kwargs}
    if checkpoint is not None:
        trainer.resume_with(checkpoint, resume_path)
    trainer.prepare(bundle.train, bundle.val)  # set-up, resume, monitor check: may raise
    if world.rank > 0:
        if trainer.epoch < (1 if c.fast_dev_run else c.epochs):
            trainer.fit(bundle.train, bundle.val)
        distributed.wait_for_all()
        distributed.shutdown()
        return RunResult(run.path if run else None, trainer.history, {})
    store = Store(c.store) if run is not None else None  # a bad store fails here, before output
    if trainer.resumed_at is not None:
        at = trainer.resumed_at
        print(
            f"resumed from {resume_path} at epoch {at['epoch'] + 1}, batch "
            f"{at['batch_in_epoch']} (optimizer step {at['global_step']})",
            file=out,
        )
    for key, value in bundle.info.items():
        print(f"{key}: {value}", file=out)
    if run is None:
        summary = _train_and_summarise(cfg, bundle, trainer, None, out)
        distributed.wait_for_all()
        distributed.shutdown()
        return RunResult(None, trainer.history, summary)
    session = RunSession(
        run,
        store,
        experiment=experiment,
        config=cfg.to_flat(),
        config_text=cfg.to_yaml(),
        recipe=cfg.recipe,
        group_id=group_id,
        member=member,
        device=str(trainer.device),
        resumed=(trainer.epoch, trainer.global_step) if checkpoint is not None else None,
        trackers=[
            *make_trackers(c.wandb, c.mlflow, experiment, run.id, cfg.to_flat(), str(run.path)),
            *(trackers or []),
        ],
    )
    try:
        with session, sigterm_as_interrupt():
            try:
                summary = _train_and_summarise(cfg, bundle, trainer, run, out)
            except BaseException:
                session.summary = {
                    "recipe": cfg.recipe,
                    "epochs": trainer.epoch,
                    "history": trainer.history,
                }
                raise
            session.finish(summary, "diverged" if trainer.diverged else "finished")
    finally:
        store.close()
    distributed.wait_for_all()  # the other processes leave with rank 0
    distributed.shutdown()
    return RunResult(run.path, trainer.history, {**summary, "status": session.status})


def locate_run(
    cfg: RunConfig, run_dir: str | Path | None
) -> tuple[RunConfig, Path | None, dict[str, Any] | None, Path | None]:
    """Where a run reads and writes, checked before anything is made: a resumed run's folder
    and checkpoint (its overrides and position checked), or a new run's runs folder and store.
    Returns ``(cfg, run_dir, checkpoint, checkpoint path)``."""
    from mlenv.train.checkpoint import load_checkpoint, resolve_checkpoint

    c = cfg.train
    if not c.resume:
        return new_run_locations(cfg), Path(run_dir) if run_dir else None, None, None
    if c.resume in ("last", "best") and run_dir is None:
        run_dir = latest_run(c.runs_dir, c.experiment or cfg.recipe, c.resume)
    folder = Path(run_dir) / "checkpoints" if run_dir else None
    resume_path = resolve_checkpoint(c.resume, folder)
    run_dir = checkpoint_run_folder(resume_path, run_dir)
    checkpoint = load_checkpoint(resume_path)
    check_resume_overrides(checkpoint["config"], cfg, resume_path)
    cfg = resume_locations(cfg, checkpoint, run_dir)
    check_resume_position(checkpoint, cfg, run_dir, resume_path)
    return cfg, run_dir, checkpoint, resume_path


def checkpoint_run_folder(path: Path, run_dir: str | Path | None) -> Path:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/NAME.pt``): a resume continues
    that run, and only that run (``--resume-run X --resume`` a checkpoint of another run is
    refused, so two runs are never grafted together)."""
    path = Path(path)
    owner = path.absolute().parent.parent
    is_runs = path.absolute().parent.name == "checkpoints" and (owner / "config.yaml").is_file()
    if run_dir is not None:
        if not is_runs or owner.resolve() != Path(run_dir).absolute().resolve():
            raise ConfigError(
                f"resume: {path} is not a checkpoint of the run {run_dir} "
                f"(give one of {Path(run_dir) / 'checkpoints'})"
            )
        return Path(run_dir)
    if not is_runs:
        raise ConfigError(
            f"resume: {path} is not in a run folder's checkpoints/; resume a run with "
            "--resume-run RUN_DIR, or load the weights yourself to start a new run from them"
        )
    return owner


def _creatable(path: Path, flag: str) -> None:
    """A missing folder may be created when its parent exists or it lies below the current
    folder; anything else is a typo more often than a wish (and would make folders at /)."""
    if path.exists():
        return
    absolute = Path(os.path.abspath(path))
    if absolute.parent.is_dir() or absolute.is_relative_to(Path.cwd()):
        return
    raise ConfigError(f"{flag}: the folder {absolute.parent} does not exist; create it first")


def check_runs_dir(runs_dir: str | Path) -> None:
    """``--runs-dir`` must be (or become) a folder of runs: not a file, not inside a run."""
    from mlenv.track.outputs import run_folder_of

    path = Path(runs_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--runs-dir: {path} exists and is not a folder")
    inside = run_folder_of(path)
    if inside is not None:
        raise ConfigError(f"--runs-dir: {path} is inside the run folder {inside}; give another")
    _creatable(path, "--runs-dir")
    existing = next((p for p in [path, *path.absolute().parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--runs-dir: cannot create or write in {path} (permission denied)")


def new_run_locations(cfg: RunConfig) -> RunConfig:
    """``runs_dir`` and ``store`` as absolute paths (the run's config.yaml keeps them, so a
    resume from another folder writes to the same store), checked before anything is made."""
    c = cfg.train
    check_runs_dir(c.runs_dir)
    store = Path(c.store) if c.store else Path(c.runs_dir) / "mlenv.db"
    if store.is_dir():
        raise ConfigError(f"--store: {store} is a folder; give the database file's path")
    if c.store:
        _creatable(store.parent, "--store")
    train = dataclasses.replace(
        c, runs_dir=os.path.abspath(c.runs_dir), store=os.path.abspath(store)
    )
    return dataclasses.replace(cfg, train=train)


def resume_locations(cfg: RunConfig, checkpoint: dict[str, Any], run_dir: Path) -> RunConfig:
    """Where a resumed run reads and writes, whatever the current folder: its data file at the
    absolute path it was trained on (its contents checked against the stored SHA-256), its
    runs folder and store as recorded (older runs: the folder that holds the run, and the store
    in it)."""
    data_state = checkpoint.get("extra", {}).get("data", {})
    data = dict(cfg.data)
    if data_state.get("data_path") and "data" in data:
        from mlenv.data.tabular import check_same_data

        data["data"] = str(data_state["data_path"])
        changed = check_same_data(data["data"], data_state)
        if changed:
            raise ConfigError(f"resume: {changed}")
    c = cfg.train
    runs_dir = Path(c.runs_dir)
    if not runs_dir.is_absolute():
        runs_dir = Path(run_dir).absolute().parent.parent
    store = Path(c.store) if c.store else runs_dir / "mlenv.db"
    if not store.is_absolute() and not c.store:
        store = runs_dir / "mlenv.db"
    train = dataclasses.replace(c, runs_dir=str(runs_dir), store=os.path.abspath(store))
    return dataclasses.replace(cfg, data=data, train=train)


def check_resume_position(
    checkpoint: dict[str, Any], cfg: RunConfig, run_dir: Path, path: Path
) -> None:
    """Something must be left to do: epochs to train, or (a run stopped after its last epoch,
    before its summary) the test and summary; an early-stopped run continues only with a larger
    patience or without early stopping."""
    c = cfg.train
    state = checkpoint["state"]
    done = state["epoch"]
    stored = checkpoint["config"]
    finished = _summary_status(Path(run_dir)) in ("finished", "diverged")
    if done >= c.epochs and finished:
        raise ConfigError(
            f"resume: {path} has already trained {done} of {c.epochs} epochs; "
            "give --epochs N larger than that to train further"
        )
    reason = state.get("stop_reason", "")
    if reason and c.early_stopping and c.patience <= stored.get("patience", c.patience):
        raise ConfigError(
            f"resume: the run stopped early ({reason}); give --patience larger than "
            f"{stored.get('patience')} or --early-stopping false to train on"
        )


def _summary_status(run_dir: Path) -> str | None:
    import json

    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM outside the training loop (test, report, plots) ends the run as Ctrl-C does:
    status ``interrupted``, lock released, and a later resume finishes the summary. Inside the
    loop the Trainer's own handler saves a checkpoint first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    from mlenv.train.checkpoint import file_sha256, load_checkpoint, load_model_state
    from mlenv.train.trainer import FitResult

    c = cfg.train
    started = time.time()
    if trainer.epoch < (1 if c.fast_dev_run else c.epochs):
        result = trainer.fit(bundle.train, bundle.val)
    else:  # resumed after its last epoch: only the test and the summary were missing
        kept = trainer.top_k.kept if trainer.top_k is not None else []
        best = {c.monitor: kept[0][0], "checkpoint": kept[0][1]} if kept else {}
        reason = trainer.state.stop_reason or f"completed {trainer.epoch} epochs"
        result = FitResult(trainer.history, reason, best)
    print(format_table(result.history), file=out)
    summary: dict[str, Any] = {
        "recipe": cfg.recipe,
        "epochs": trainer.epoch,
        "stop_reason": result.stop_reason,
        "device": str(trainer.device),
        "threads": trainer.threads,
        "parameters": trainer.parameter_count,
        "steps_run": trainer.steps_run,  # by this process: all of them unless resumed
        "seconds": round(time.time() - started, 2),
    }
    if trainer.world.size > 1:  # each process trained its share of every batch
        summary["processes"] = trainer.world.size
        summary["rows_per_process"] = trainer.rows_per_process
    summary.update({k: v for k, v in result.last.items() if k not in ("epoch", "seconds")})
    summary["data"] = bundle.info
    if result.best:
        summary["best_" + c.monitor] = result.best[c.monitor]
    best_file = run.checkpoints / "best.pt" if run is not None else None
    if c.test_on == "best" and best_file is not None and best_file.is_file():
        best = load_checkpoint(best_file)
        load_model_state(trainer.raw_model, best["model"], best_file)
        summary["tested_on"] = f"best ({c.monitor}, epoch {best['state']['epoch']})"
    else:
        summary["tested_on"] = f"last (epoch {trainer.epoch})"
    if run is not None:  # the weights the test metrics come from: the file to share
        summary["weights"] = str(trainer.save_weights(run.path / "model.safetensors"))
        summary["weights_sha256"] = file_sha256(run.path / "model.safetensors")
    if bundle.test is not None:
        summary.update(trainer.evaluate(bundle.test))
        summary.update(trainer.report(bundle, run))
    if run is not None:
        summary["run_dir"] = str(run.path)
        if result.history:
            plot = plot_loss_curve(result.history, run.plots / "loss_curve.png")
            summary["loss_curve"] = str(plot)
        run.write_summary({**summary, "status": "running"})
    else:
        summary["fast_dev_run"] = "ok: one batch of train and validation ran; nothing written"
    print(file=out)
    print(format_summary(summary), file=out)
    return summary


# ----------------------------------------------------------------------------------------------
# Several processes: `--devices N` launches torchrun; each process runs `run_recipe` in lockstep.


def join_launch(cfg: RunConfig) -> tuple[RunConfig, Any]:
    """``--devices`` and ``--strategy`` checked against this process's launch; under torchrun,
    join its process group. Returns the configuration (``devices`` as torchrun started them on
    this machine, so a resume starts as many) and this process's ``World``."""
    from mlenv.runtime import distributed
    from mlenv.runtime.device import choose_device

    c = cfg.train
    if not distributed.launched():
        distributed.check_devices(c.devices, c.device, c.strategy)
        return cfg, distributed.world()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if c.devices not in (1, local):
        raise ConfigError(
            f"--devices {c.devices}: torchrun started {local} processes on this machine; "
            f"give --devices {local} or leave it out"
        )
    distributed.check_devices(local, c.device, c.strategy)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(c, devices=local))
    device = distributed.process_device(choose_device(c.device))
    return cfg, distributed.init_process_group(device)


def launch_recipe(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    out: Any = None,
    group_id: int | None = None,
    member: str | None = None,
    trackers: list[Any] | None = None,
) -> RunResult:
    """``--devices N`` outside torchrun: check here what can be checked (devices, a resumed
    checkpoint, the runs folder), name the run folder, then run the recipe in N processes that
    torchrun starts (``torch.distributed.run``, called in this process). When a process dies, the
    run gets a final status that names it (``killed`` by a signal, else ``failed``)."""
    import tempfile

    import yaml
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    from mlenv.runtime import distributed
    from mlenv.track.run import Run

    out = out or sys.stdout
    c = cfg.train
    if trackers:
        raise ConfigError(
            f"--devices {c.devices}: in-process trackers (a sweep's pruner) see only this "
            "process; give --devices 1"
        )
    distributed.check_devices(c.devices, c.device, c.strategy)
    located, run_dir, _, _ = locate_run(cfg, run_dir)
    if run_dir is None and not c.fast_dev_run:
        run_dir = Run.plan(located.train.runs_dir, c.experiment or cfg.recipe).path
    with tempfile.TemporaryDirectory(prefix="mlenv-launch-") as tmp:
        spec = Path(tmp)
        (spec / "spec.yaml").write_text(
            yaml.safe_dump(
                {
                    "config": cfg.to_flat(),
                    "run_dir": str(run_dir) if run_dir else None,
                    "group_id": group_id,
                    "member": member,
                }
            )
        )
        argv = ["--standalone", "--nnodes", "1", "--nproc-per-node", str(c.devices)]
        argv += ["--module", "mlenv.train.run", str(spec)]
        print(f"torchrun: {c.devices} processes", file=out, flush=True)
        try:
            with _omp_threads(c.devices), _quiet_torchrun():
                torchrun(parse_args(argv))
        except ChildFailedError as exc:
            _launch_failed(exc, spec, located, run_dir, c.devices)
        except SignalException as exc:
            from mlenv.train.trainer import TrainingInterrupted

            reported = _read_json(spec / "error.json")
            message = reported.get("message") or f"stopped by {exc.sigval.name}"
            raise TrainingInterrupted(message) from None
        result = _read_json(spec / "result.json")
    folder = result.get("run_dir")
    return RunResult(Path(folder) if folder else None, result["history"], result["summary"])


@contextlib.contextmanager
def _omp_threads(processes: int) -> Iterator[None]:
    """torchrun sets OMP_NUM_THREADS=1 for its processes (and says so) unless it is set; set it
    to this machine's cores over the processes (the Trainer then picks each one's threads)."""
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // processes))
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)


@contextlib.contextmanager
def _quiet_torchrun() -> Iterator[None]:
    """torchrun's own log lines (closing signals, exit codes) say again what the launcher's one
    line says; a process's traceback still shows, from the process itself."""
    import logging

    loggers = [
        logging.getLogger(name)
        for name in list(logging.Logger.manager.loggerDict)
        if name.startswith("torch.distributed.elastic")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _launch_failed(
    exc: Any, spec: Path, cfg: RunConfig, run_dir: Path | None, processes: int
) -> None:
    """A launch whose processes did not all end well: rank 0's own error when it raised one
    (a bad CSV, a non-finite loss, a stop by signal); else the first process that died, which
    the run's summary and the store record (``killed`` by a signal, else ``failed``)."""
    from mlenv import errors
    from mlenv.train.trainer import TrainingInterrupted

    reported = _read_json(spec / "error.json")
    if reported:
        kinds = {"TrainingInterrupted": TrainingInterrupted}
        kind = kinds.get(reported["kind"]) or getattr(errors, reported["kind"], errors.MlenvError)
        raise kind(reported["message"])
    rank, failure = exc.get_first_failure()
    if failure.exitcode < 0:
        status, how = "killed", f"was killed by {failure.signal_name()}"
    else:
        status, how = "failed", f"exited with code {failure.exitcode}"
    reason = f"process {rank} of {processes} (pid {failure.pid}) {how}"
    if run_dir is None or not (Path(run_dir) / "summary.json").is_file():
        raise errors.TrainingError(reason)
    _record_end(cfg, Path(run_dir), status, reason)
    raise errors.TrainingError(
        f"{reason}; the run {Path(run_dir).name} is marked {status}; "
        f"resume it from its last checkpoint with: mlenv train --resume-run {run_dir}"
    )


def _record_end(cfg: RunConfig, run_dir: Path, status: str, reason: str) -> None:
    """The final status of a run whose rank 0 could not record it (it died, or it saw only a
    lost connection): ``summary.json`` and the store."""
    from mlenv.track.run import Run
    from mlenv.track.store import Store

    run = Run(run_dir)
    summary = run.read_summary()
    if summary.get("status") not in (None, "running", "failed"):
        return  # rank 0 recorded its own end (finished, interrupted, ...)
    run.write_summary({**summary, "status": status, "stop_reason": reason})
    store = Store(cfg.train.store)
    try:
        store.finish_run(run.id, status, None, error=reason)
    finally:
        store.close()


def worker_main(argv: list[str]) -> int:
    """One of the processes ``launch_recipe`` starts: ``python -m mlenv.train.run SPEC_DIR``.
    Rank 0 leaves its error (for the launcher to print once) or its result in SPEC_DIR."""
    import yaml

    from mlenv.config import recipe_from_config, resolve
    from mlenv.errors import MlenvError
    from mlenv.runtime import distributed
    from mlenv.train.trainer import TrainingInterrupted

    spec = Path(argv[0])
    rank = int(os.environ.get("RANK", "0"))
    job = yaml.safe_load((spec / "spec.yaml").read_text())

    def leave(name: str, value: dict[str, Any]) -> None:
        if rank == 0:
            from mlenv.train.checkpoint import atomic_write_bytes

            atomic_write_bytes(spec / name, json.dumps(value, default=str).encode())

    try:
        flat = job["config"]
        cfg = resolve(recipe_from_config(flat["recipe"]), [], base=flat)
        result = run_recipe(cfg, job["run_dir"], group_id=job["group_id"], member=job["member"])
        leave("result.json", dataclasses.asdict(result))
        return 0
    except MlenvError as exc:
        leave("error.json", {"kind": type(exc).__name__, "message": str(exc)})
        return 130 if isinstance(exc, TrainingInterrupted) else 2
    except KeyboardInterrupt:
        leave("error.json", {"kind": "TrainingInterrupted", "message": "interrupted"})
        return 130
    except RuntimeError as exc:
        if not distributed.lost_peer(exc):
            raise
        first = str(exc).strip().splitlines()[0]
        print(f"mlenv: process {rank}: lost another process ({first})", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()


# ----------------------------------------------------------------------------------------------
# Trained runs.


@dataclass
class LoadedRun:
    """What ``load_run`` returns: the resolved configuration, the model with the trained weights
    loaded (on the CPU, in eval mode), the task, the data's preprocessing, and the checkpoint."""

    config: RunConfig
    model: Any
    task: Any
    preprocessing: dict[str, Any]
    checkpoint_path: Path
    checkpoint: dict[str, Any]

    def __iter__(self):  # (config, model, task, preprocessing), as the contract says
        return iter((self.config, self.model, self.task, self.preprocessing))

    def trainer(self) -> Any:
        """A Trainer around the loaded model (its weights are used as they are)."""
        from mlenv.train.trainer import Trainer

        trainer = Trainer(
            self.config.train, self.model, task=self.task, run_config=self.config.to_flat()
        )
        trainer.data_state = self.preprocessing
        return trainer


def load_run(
    path: str | Path, overrides: list[str] | None = None, prog: str = "mlenv"
) -> LoadedRun:
    """A trained run (its folder, which means the checkpoint its test metrics came from: best.pt
    or last.pt, or a checkpoint file): configuration from the checkpoint (the
    recipe is inlined, so a run from the user's own recipe file loads anywhere), the model built
    from it and the data's preprocessing, the weights loaded. No training data is read.

    >>> config, model, task, preprocessing = load_run("runs/tabular-binary/<id>")  # doctest: +SKIP
    """
    from mlenv.config import recipe_from_config, resolve
    from mlenv.train.checkpoint import load_checkpoint, load_model_state, resolve_checkpoint

    folder = Path(path)
    best = folder / "checkpoints" / "best.pt"
    if folder.is_dir() and best.is_file() and _stored_test_on(folder) == "best":
        checkpoint_path = best  # the weights the run's test metrics came from
    else:
        checkpoint_path = resolve_checkpoint(str(path), None)
    checkpoint = load_checkpoint(checkpoint_path)
    base = dict(checkpoint["config"])
    if "recipe" not in base:
        raise ConfigError(f"{checkpoint_path}: the checkpoint's configuration names no recipe")
    argv = ["--progress", "false", *(overrides or [])]
    cfg = resolve(recipe_from_config(base["recipe"]), argv, prog=prog, base=base)
    preprocessing = checkpoint.get("extra", {}).get("data", {})
    model = build_model(cfg, preprocessing.get("model_kwargs", {}))
    load_model_state(model, checkpoint["model"], checkpoint_path)
    model.eval()
    return LoadedRun(cfg, model, build_task(cfg), preprocessing, checkpoint_path, checkpoint)


def _stored_test_on(folder: Path) -> str:
    import yaml

    try:
        return (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("test_on", "best")
    except (OSError, yaml.YAMLError, AttributeError):
        return "best"


def load_trained(weights: str, overrides: list[str] | None = None, prog: str = "mlenv") -> tuple:
    """``(trainer, config, checkpoint, checkpoint path)`` with the weights loaded (see
    ``load_run``)."""
    loaded = load_run(weights, overrides, prog)
    return loaded.trainer(), loaded.config, loaded.checkpoint, loaded.checkpoint_path


def evaluate_run(
    weights: str, overrides: list[str] | None = None, prog: str = "mlenv test"
) -> dict[str, Any]:
    """Evaluate a trained run on its recipe's test split, rebuilt from the stored configuration
    and seed. A CSV is read from the absolute path it was trained on (not relative to the current
    folder) unless ``--data`` names another; a file whose contents differ from the one trained on
    gives a warning (``"warning"`` in the result), other columns an error."""
    overrides = list(overrides or [])
    loaded = load_run(weights, overrides, prog)
    trained = loaded.preprocessing
    given = any(a.split("=")[0] == "--data" for a in overrides)
    if trained.get("data_path") and not given:
        overrides += ["--data", str(trained["data_path"])]
        loaded = load_run(weights, overrides, prog)
    bundle = build_data(loaded.config)
    warning = None
    if trained.get("kind") == "tabular":
        from mlenv.data.tabular import check_same_columns, check_same_data

        check_same_columns(bundle.state, trained)
        warning = check_same_data(loaded.config.data["data"], trained)
    split = bundle.test if bundle.test is not None else bundle.val
    if split is None:
        raise ConfigError(f"test: the run {weights} has neither a test nor a validation split")
    trainer = loaded.trainer()
    metrics = trainer.evaluate(split, prefix="test" if bundle.test is not None else "val")
    out = {"checkpoint": str(loaded.checkpoint_path), **metrics}
    if warning:
        out["warning"] = warning
    return out


def predict_csv(
    weights: str, data: str, out: str, no_header: bool | None, overrides: list[str] | None = None
) -> tuple[int, float | None]:
    """Write ``line,probability,predicted[,label]`` for every row of ``data`` with a trained
    tabular model; returns the row count and the accuracy when the file has labels."""
    import numpy as np
    import pandas as pd
    import torch

    from mlenv.data.tabular import read_for_prediction
    from mlenv.train.checkpoint import atomic_write_bytes

    loaded = load_run(weights, overrides, "mlenv predict")
    data_state = loaded.preprocessing
    if data_state.get("kind") != "tabular":
        raise ConfigError(f"predict: {loaded.checkpoint_path} was not trained on a tabular CSV")
    header_off = loaded.config.data.get("no_header", False) if no_header is None else no_header
    x, lines, labels = read_for_prediction(data, data_state, header_off)
    features = torch.tensor(x, dtype=torch.float32)
    trainer = loaded.trainer()
    probability = trainer.predict((features,)).numpy()
    values = np.array(data_state["label_values"])
    threshold = getattr(loaded.task, "threshold", 0.5)
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


if __name__ == "__main__":  # a process of a launch: torchrun runs this module
    from mlenv.train.run import worker_main as _worker_main

    sys.exit(_worker_main(sys.argv[1:]))
