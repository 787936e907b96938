"""The Trainer: a plain loop whose parts are small public methods.

Override ``get_criterion`` and ``forward_pass`` for most tasks; ``inference``, ``train_epoch`` and
``validate_epoch`` when a task needs it. The loop's parts (``autocast``, ``backward``,
``clip_gradients``, ``optimizer_step``) are public so a custom ``train_epoch`` stays short.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlenv.config import TrainConfig
from mlenv.data.batching import Batches, TensorBatches, make_batches
from mlenv.errors import CheckpointError, ConfigError, TrainingError
from mlenv.runtime.device import choose_device
from mlenv.runtime.seed import capture_rng_state, restore_rng_state, seed_everything
from mlenv.runtime.threads import apply_threads, choose_threads, estimate_flops
from mlenv.train import losses
from mlenv.train.callbacks import EarlyStopping, TopKCheckpoints
from mlenv.train.checkpoint import (
    load_checkpoint,
    load_model_state,
    resolve_checkpoint,
    serialize,
    strip_compile_prefix,
)
from mlenv.train.schedules import LRSchedule


@dataclass
class FitResult:
    """What ``fit`` returns: the per-epoch history and why it stopped."""

    history: list[dict[str, Any]]
    stop_reason: str
    best: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


class _Sums:
    """Sample-weighted running sums of per-batch means (Python floats: no tensor ops per step)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float], n: int) -> None:
        for key, value in values.items():
            self.totals[key] = self.totals.get(key, 0.0) + value * n
        self.count += n

    def means(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{k}": v / max(self.count, 1) for k, v in self.totals.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"totals": dict(self.totals), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.totals, self.count = dict(state["totals"]), state["count"]


class _StopRequest:
    """SIGTERM / first Ctrl-C: finish the current step, save a checkpoint, then exit."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Train, evaluate and predict with one model.

    Subclasses may add keyword-only ``__init__`` arguments with defaults: a recipe's command line
    offers them as flags (the "task" group).

    >>> trainer = Trainer(TrainConfig(epochs=2), model=my_model)      # doctest: +SKIP
    >>> result = trainer.fit((x_train, y_train), (x_val, y_val))        # doctest: +SKIP
    """

    collect_predictions = False  # set True to get ``epoch_metrics`` over a whole pass

    def __init__(
        self,
        config: TrainConfig | None = None,
        model: nn.Module | None = None,
        *,
        run: Any = None,
        run_config: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        if model is None:
            raise ConfigError("Trainer needs a model")
        config = config or TrainConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self.model = model
        self.run = None if config.fast_dev_run else run
        self.run_config = run_config or {"train": config.to_dict()}
        self.device = choose_device(config.device)
        self.history: list[dict[str, Any]] = []
        self.global_step = 0
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # batches completed in the current epoch
        self.threads: int | None = None
        self.stop_reason = ""
        self._set_up = False
        self._sums = _Sums()
        self._accumulated = 1
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: LRSchedule | None = None
        self.data_state: dict[str, Any] = {}  # the data's preprocessing, saved in checkpoints

    # ------------------------------------------------------------------------------------------
    # What a task overrides.

    def get_criterion(self) -> Any:
        """A loss, a tuple/list of losses, or ``{name: loss | (loss, weight)}``."""
        raise NotImplementedError(f"{type(self).__name__} must define get_criterion()")

    def forward_pass(self, batch: Any) -> tuple[Any, Any]:
        """``(loss, predictions)``; the loss has the criterion's shape (tensor, list or dict)."""
        x, y = batch[0], batch[1]
        output = self.model(x)
        return losses.apply_criterion(self._loss_functions, output, y), output

    def inference(self, batch: Any) -> torch.Tensor:
        """Predictions for a batch, as ``predict`` returns them."""
        return self.model(batch[0])

    def batch_metrics(self, predictions: Any, batch: Any) -> dict[str, torch.Tensor]:
        """Extra per-batch metrics (means over the batch), averaged over the epoch."""
        return {}

    def configure_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if c.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
            )
        cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        # The fused kernel does the same math in one pass over all parameters: 23% less time per
        # step on the 20-64-32-1 MLP (docs/performance.md). It needs floating-point parameters on
        # the CPU or CUDA.
        fused = self.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        return cls(params, lr=c.lr, weight_decay=c.weight_decay, fused=fused or None)

    def epoch_metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Metrics over the whole validation pass (AUC, F1, ...); called when the class sets
        ``collect_predictions = True`` with every prediction and target concatenated."""
        return {}

    def report(self, bundle: Any, run: Any) -> dict[str, Any]:
        """After the test evaluation of a recipe run: extra plots and figures for the summary."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Task state kept in checkpoints, as tensors and plain data: by default the data's
        preprocessing (``data_state``: a fitted scaler, a label mapping)."""
        return {"data": self.data_state}

    # ------------------------------------------------------------------------------------------
    # Set-up.

    def setup(self, example_batch: Any, steps_per_epoch: int) -> None:
        """Seed, init weights, choose threads, move to device, build optimizer and schedule."""
        c = self.config
        seed_everything(c.seed, c.deterministic)
        if hasattr(self.model, "init_weights"):
            self.model.init_weights()
        flops = None
        if c.threads is None and self.device.type == "cpu":
            flops = estimate_flops(self.model, self._first_input(example_batch))
        self.threads = choose_threads(flops, c.threads)
        apply_threads(self.threads)
        self.model.to(self.device)
        self.criterion = self.get_criterion()
        self._loss_functions = losses.criterion_functions(self.criterion)
        self._loss_weights = losses.criterion_weights(self.criterion)
        self._term_names = losses.term_names(self.criterion)
        self.optimizer = self.configure_optimizer()
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.steps_per_epoch = math.ceil(steps_per_epoch / c.accumulate)
        self.scheduler = LRSchedule(self.optimizer, c, self.steps_per_epoch)
        amp = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[c.precision]
        self._amp_dtype = amp
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.precision == "16")
        self.early_stopping = (
            EarlyStopping(c.patience, c.mode, c.min_delta, c.monitor) if c.early_stopping else None
        )
        self.top_k = (
            TopKCheckpoints(self.run.checkpoints, c.save_top_k, c.monitor, c.mode)
            if self.run is not None
            else None
        )
        self.raw_model = self.model
        if c.compile:
            self.model = torch.compile(self.model)
        self._set_up = True

    @staticmethod
    def _first_input(batch: Any) -> Any:
        return batch[0] if isinstance(batch, list | tuple) else batch

    # ------------------------------------------------------------------------------------------
    # The loop's parts.

    def to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, list | tuple):
            return type(batch)(self.to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        return batch

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """Forward pass under autocast; returns the total, the named terms and the predictions."""
        with self.autocast():
            loss, predictions = self.forward_pass(batch)
        total, terms = losses.combine_terms(loss, self._loss_weights, self._term_names)
        return total, terms, predictions

    def backward(self, total: torch.Tensor) -> None:
        """Backward of the loss, divided by the batches in its accumulation group (so the step
        sees their mean) and scaled by the grad scaler under fp16."""
        if self._accumulated > 1:
            total = total / self._accumulated
        self.scaler.scale(total).backward()

    def clip_gradients(self) -> None:
        c = self.config
        if c.grad_clip is None:
            return
        self.scaler.unscale_(self.optimizer)
        if c.grad_clip_mode == "norm":
            torch.nn.utils.clip_grad_norm_(self._params, c.grad_clip)
        else:
            torch.nn.utils.clip_grad_value_(self._params, c.grad_clip)

    def optimizer_step(self) -> None:
        """Clip, step (through the grad scaler), zero the gradients, advance the schedule."""
        self.clip_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.scheduler.step()
        if self.run is not None:
            self.run.log_step("lr", self.optimizer.param_groups[0]["lr"], self.global_step)

    def loss_values(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """The batch's loss and terms as floats; stops at once, before any backward, when the
        loss is not finite, so the weights and the last checkpoint stay good."""
        values = {"loss": total.item()}
        for name, term in terms.items():
            values[name] = term.item()
        if not math.isfinite(values["loss"]):
            self._nonfinite(values, terms)
        limit = self.config.divergence_threshold
        if limit is not None and self.model.training and values["loss"] > limit:
            raise Diverged(
                f"diverged: training loss {values['loss']:.6g} > divergence_threshold {limit:g} "
                f"at epoch {self.epoch + 1}, step {self.global_step + 1}"
            )
        return values

    def record(self, values: dict[str, float], metrics: dict[str, Any], n: int) -> None:
        """Add one batch's loss values and metrics to the epoch's sums."""
        for name, metric in metrics.items():
            values[name] = float(metric)
        self._sums.add(values, n)

    def _nonfinite(self, values: dict[str, float], terms: dict[str, torch.Tensor]) -> None:
        from mlenv.train.nonfinite import first_nonfinite_layer

        bad = [name for name in terms if not math.isfinite(values[name])] or ["loss"]
        batch = self._current_batch
        layer = first_nonfinite_layer(self.model, lambda: self.forward_pass(batch))
        kept = " (the last good checkpoint is untouched)" if self.run is not None else ""
        raise TrainingError(
            f"non-finite loss at epoch {self.epoch + 1}, step {self.global_step + 1}: "
            f"term {', '.join(repr(b) for b in bad)} = {values[bad[0]]}; "
            f"first non-finite output: {layer}{kept}"
        )

    @staticmethod
    def batch_size_of(batch: Any) -> int:
        first = batch[0] if isinstance(batch, list | tuple) else batch
        if isinstance(first, dict):
            first = next(iter(first.values()))
        return len(first)

    def iterate(self, batches: Batches, desc: str) -> Iterator[Any]:
        """Batches moved to the device, with a progress bar."""
        from tqdm.auto import tqdm

        on_device = isinstance(batches, TensorBatches)
        if on_device:
            batches.to(self.device)
        total = len(batches) - batches.start
        bar = tqdm(
            batches,
            total=total,
            desc=desc,
            leave=False,
            disable=not (self.config.progress and sys.stderr.isatty()),
            dynamic_ncols=True,
            mininterval=0.5,
        )
        for batch in bar:
            yield batch if on_device else self.to_device(batch)

    # ------------------------------------------------------------------------------------------
    # Epochs.

    def train_epoch(self, batches: Batches) -> dict[str, float]:
        """One pass over the training batches; returns ``train_*`` means."""
        self.model.train()
        accumulate = self.config.accumulate
        n_batches = len(batches)
        for batch in self.iterate(batches, f"epoch {self.epoch + 1}"):
            self._current_batch = batch
            total, terms, predictions = self.compute_loss(batch)
            values = self.loss_values(total, terms)
            group_start = self.batch_in_epoch - self.batch_in_epoch % accumulate
            self._accumulated = min(accumulate, n_batches - group_start)
            self.backward(total)
            with torch.no_grad():
                metrics = self.batch_metrics(predictions, batch)
            self.record(values, metrics, self.batch_size_of(batch))
            if self.run is not None:
                self.run.log_step("loss", values["loss"], self.global_step + 1)
            self.batch_in_epoch += 1
            if self.batch_in_epoch % accumulate == 0 or self.batch_in_epoch == n_batches:
                self.optimizer_step()
                self.after_optimizer_step()
            if self._stop.signal_name:
                self._save_and_exit()
        return self._sums.means("train")

    @torch.no_grad()
    def validate_epoch(self, batches: Batches, prefix: str = "val") -> dict[str, float]:
        """One pass without gradients; returns ``<prefix>_*`` means."""
        self.model.eval()
        sums, self._sums = self._sums, _Sums()
        collected: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            for batch in self.iterate(batches, prefix):
                self._current_batch = batch
                total, terms, predictions = self.compute_loss(batch)
                metrics = self.batch_metrics(predictions, batch)
                self.record(self.loss_values(total, terms), metrics, self.batch_size_of(batch))
                if self.collect_predictions:
                    collected.append((predictions.float().cpu(), batch[1].cpu()))
            means = self._sums.means(prefix)
            if collected:
                predictions = torch.cat([p for p, _ in collected])
                targets = torch.cat([t for _, t in collected])
                extra = self.epoch_metrics(predictions, targets)
                means.update({f"{prefix}_{k}": v for k, v in extra.items()})
            return means
        finally:
            self._sums = sums

    # ------------------------------------------------------------------------------------------
    # fit / evaluate / predict.

    def _batches(self, data: Any, shuffle: bool, limit: int | None = None) -> Batches:
        return make_batches(data, self.config.batch_size, shuffle, self.config.seed, limit)

    def fit(self, train_data: Any, val_data: Any = None) -> FitResult:
        """Train for ``config.epochs`` (or until stopped); ``val_data`` is optional."""
        c = self.config
        limit = 1 if c.fast_dev_run else c.limit_batches
        train = self._batches(train_data, shuffle=True, limit=limit)
        val = self._batches(val_data, shuffle=False, limit=limit) if val_data is not None else None
        if c.overfit_batches:
            train = self._overfit_subset(train)
            val = train
        example = next(iter(train))
        self.setup(self.to_device(example), len(train))
        if c.resume:
            self.resume_from(c.resume)
        if self.run is not None:
            self.run.start()
        if c.plot_lr and self.run is not None:
            from mlenv.train.schedules import plot_schedule

            plot_schedule(c, self.steps_per_epoch, self.run.plots / "lr_schedule.png")
        epochs = 1 if c.fast_dev_run else c.epochs
        start = time.perf_counter()
        self.stop_reason = f"completed {epochs} epochs"
        with _StopRequest() as self._stop, self._profiler() as profiler:
            self._profiler_step = profiler.step if profiler is not None else None
            while self.epoch < epochs:
                try:
                    metrics = self._run_epoch(train, val)
                except Diverged as exc:  # stop at once; the last checkpoint is the last good one
                    self.stop_reason = str(exc)
                    print(f"mlenv: {exc}", file=sys.stderr)
                    break
                reason = self._epoch_end(metrics)
                if reason:
                    self.stop_reason = reason
                    break
        if self.run is not None:
            self.run.close()
        best = {}
        if self.top_k is not None and self.top_k.kept:
            best = {c.monitor: self.top_k.kept[0][0], "checkpoint": self.top_k.kept[0][1]}
        return FitResult(self.history, self.stop_reason, best, time.perf_counter() - start)

    def after_optimizer_step(self) -> None:
        """Step-level checkpoints and the profiler's clock."""
        if self._profiler_step is not None:
            self._profiler_step()
        every = self.config.save_every_steps
        if self.run is not None and every and self.global_step % every == 0:
            self.save("last")

    def _run_epoch(self, train: Batches, val: Batches | None) -> dict[str, float]:
        epoch_start = time.perf_counter()
        train.set_epoch(self.epoch, start=self.batch_in_epoch)
        metrics = {"epoch": self.epoch + 1, **self.train_epoch(train)}
        if val is not None:
            val.set_epoch(self.epoch)
            metrics.update(self.validate_epoch(val))
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["seconds"] = time.perf_counter() - epoch_start
        return metrics

    def _epoch_end(self, metrics: dict[str, float]) -> str:
        """After validation: schedule, early stopping, history, logs, checkpoints, in that order."""
        c = self.config
        self.epoch += 1
        self.batch_in_epoch = 0
        self._sums = _Sums()
        monitored = metrics.get(c.monitor)
        self.scheduler.epoch_end(monitored)
        reason = ""
        if self.early_stopping is not None:
            if monitored is None:
                raise ConfigError(
                    f"monitor: {c.monitor!r} is not among the epoch's metrics: "
                    f"{', '.join(k for k in metrics if k != 'epoch')}"
                )
            reason = self.early_stopping.update(monitored) or ""
        self.history.append(metrics)
        self.log_epoch(metrics)
        due = self.epoch % c.save_every == 0 or self.epoch == c.epochs or reason
        if self.run is not None and due:
            data = self.save("last")
            if monitored is not None and self.top_k is not None:
                self.top_k.offer(self.epoch, monitored, data)
                self.save("last")  # so `last` also holds the new top-k list
        return reason

    def log_epoch(self, metrics: dict[str, float]) -> None:
        """One line per epoch on the terminal (with ``progress``), and the run folder's files."""
        if self.config.progress:
            shown = "  ".join(
                f"{k} {v:.4g}"
                for k, v in metrics.items()
                if k.endswith(("loss", "acc", "auc")) and isinstance(v, float)
            )
            total = 1 if self.config.fast_dev_run else self.config.epochs
            print(f"epoch {self.epoch}/{total}  {shown}  ({metrics['seconds']:.2f} s)", flush=True)
        if self.run is None:
            return
        self.run.log_epoch(metrics, self.epoch)
        self.run.write_metrics(self.history)

    @torch.no_grad()
    def evaluate(self, data: Any, prefix: str = "test") -> dict[str, float]:
        """Mean loss and metrics over ``data``: ``{"test_loss": ..., ...}``."""
        batches = self._batches(data, shuffle=False)
        if not self._set_up:
            self.setup(self.to_device(next(iter(batches))), len(batches))
        self._stop = _StopRequest()
        return self.validate_epoch(batches, prefix)

    @torch.no_grad()
    def predict(self, data: Any) -> torch.Tensor:
        """``inference`` over every batch, concatenated, on the CPU."""
        batches = self._batches(data, shuffle=False)
        if not self._set_up:
            self.setup(self.to_device(next(iter(batches))), len(batches))
        self.model.eval()
        outputs = [
            self.inference(batch).float().cpu() for batch in self.iterate(batches, "predict")
        ]
        return torch.cat(outputs)

    # ------------------------------------------------------------------------------------------
    # Checkpoints.

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": strip_compile_prefix(self.raw_model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "position": {
                "epoch": self.epoch,
                "batch": self.batch_in_epoch,
                "global_step": self.global_step,
            },
            "epoch_sums": self._sums.state_dict(),
            "callbacks": {
                "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
                "top_k": self.top_k.state_dict() if self.top_k else None,
            },
            "history": self.history,
            "config": self.run_config,
            "extra": self.extra_state(),
        }

    def save(self, name: str = "last") -> bytes:
        """Write ``checkpoints/<name>.pt`` atomically; returns the bytes (for top-k copies)."""
        from mlenv.runtime.distributed import is_main_process
        from mlenv.train.checkpoint import FORMAT_VERSION, atomic_write_bytes

        data = serialize({"format_version": FORMAT_VERSION, **self.state_dict()})
        if is_main_process():  # under DDP every rank holds the same state; rank 0 writes it
            atomic_write_bytes(self.run.checkpoints / f"{name}.pt", data)
        return data

    def save_weights(self, path: str | Path) -> Path:
        """The model's weights alone as safetensors: the file to share (no code, no pickle)."""
        from safetensors.torch import save

        from mlenv.train.checkpoint import atomic_write_bytes

        state = {
            k: v.contiguous() for k, v in strip_compile_prefix(self.raw_model.state_dict()).items()
        }
        atomic_write_bytes(path, save(state))
        return Path(path)

    def resume_from(self, spec: str) -> None:
        """Restore everything from a checkpoint so the run continues exactly where it stopped."""
        path = resolve_checkpoint(spec, self.run.checkpoints if self.run else None)
        state = load_checkpoint(path)
        load_model_state(self.raw_model, state["model"], path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: optimizer state does not fit this run ({exc})"
            ) from None
        position = state["position"]
        self.epoch, self.batch_in_epoch = position["epoch"], position["batch"]
        self.global_step = position["global_step"]
        self._sums.load_state_dict(state["epoch_sums"])
        callbacks = state["callbacks"]
        if self.early_stopping is not None and callbacks.get("early_stopping"):
            self.early_stopping.load_state_dict(callbacks["early_stopping"])
        if self.top_k is not None and callbacks.get("top_k"):
            self.top_k.load_state_dict(callbacks["top_k"])
        self.history = list(state["history"])
        self.load_extra_state(state.get("extra", {}))
        restore_rng_state(state["rng"])

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        """Counterpart of ``extra_state``."""
        self.data_state = extra.get("data", {})

    def _save_and_exit(self) -> None:
        if self.run is not None:
            self.save("last")
            where = f"; checkpoint saved to {self.run.checkpoints / 'last.pt'}"
        else:
            where = ""
        raise TrainingInterrupted(
            f"stopped by {self._stop.signal_name} at epoch {self.epoch + 1}, "
            f"batch {self.batch_in_epoch}{where}"
        )

    def _overfit_subset(self, train: Batches) -> Batches:
        n = self.config.overfit_batches
        chunks = [b for _, b in zip(range(n), iter(train), strict=False)]
        tensors = [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]
        return TensorBatches(tensors, self.config.batch_size, shuffle=False, seed=self.config.seed)

    def _profiler(self) -> contextlib.AbstractContextManager[Any]:
        if not self.config.profile or self.run is None:
            return contextlib.nullcontext()
        from torch.profiler import ProfilerActivity, profile, schedule

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        trace_dir = self.run.path / "profile"
        trace_dir.mkdir(parents=True, exist_ok=True)

        def on_trace_ready(prof: Any) -> None:
            prof.export_chrome_trace(str(trace_dir / "trace.json"))
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
            (trace_dir / "top_ops.txt").write_text(table)

        return profile(
            activities=activities,
            schedule=schedule(wait=1, warmup=1, active=5, repeat=1),
            on_trace_ready=on_trace_ready,
            record_shapes=True,
        )


class Diverged(TrainingError):
    """A training loss above ``divergence_threshold``: the run stops at once, cleanly."""


class TrainingInterrupted(TrainingError):
    """The run was stopped by a signal after saving its checkpoint."""
