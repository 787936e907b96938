"""The Trainer: a plain loop whose parts are small public methods, over a ``Task``.

The task says what is learned (criterion, forward pass, metrics, inference); the Trainer says how
(device, precision, accumulation, clipping, schedules, checkpoints). Override ``get_criterion`` and
``forward_pass`` on a Trainer subclass, pass ``criterion=`` or ``task=``; ``train_epoch`` and
``validate_epoch`` when a loop needs it. The loop's parts (``autocast``, ``backward``,
``clip_gradients``, ``optimizer_step``) are public so a custom ``train_epoch`` stays short.

The Trainer never builds or initialises a model: it trains, evaluates and predicts with the one it
is given, and its loop state lives in one ``TrainState`` that checkpoints save.
"""

from __future__ import annotations

import contextlib
import copy
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

from mlenv.config import TrainConfig, resolve_mode
from mlenv.data.batching import Batches, LoaderBatches, TensorBatches, make_batches
from mlenv.errors import CheckpointError, ConfigError, TrainingError
from mlenv.runtime import distributed
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
from mlenv.train.ema import WeightsEMA
from mlenv.train.parallel import ShardedBatches, full_tensor, like_parameter, share_weight
from mlenv.train.schedules import LRSchedule
from mlenv.train.state import EpochSums, TrainState
from mlenv.train.tasks import Task, split_batch

# Fields a resumed run may change: they do not alter what the checkpoint's state means.
RESUMABLE_FIELDS = (
    "epochs",
    "early_stopping",
    "patience",
    "min_delta",
    "divergence_threshold",
    "save_every",
    "save_every_steps",
    "progress",
    "profile",
    "threads",
    "channels_last",
    "device",
    "devices",
    "strategy",
    "resume",
    "test_on",
    "wandb",
    "mlflow",
    "store",
    "runs_dir",
    "limit_batches",
)


def parameter_groups(
    params: list[nn.Parameter], weight_decay: float, skip_bias_norm: bool
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one group decayed by ``weight_decay``; with
    ``skip_bias_norm``, the parameters of rank < 2 (biases, and the scales and shifts of
    BatchNorm/LayerNorm/GroupNorm) in a second group without decay, so the decay shrinks only
    weight matrices and kernels (whose scale a following norm makes irrelevant otherwise)."""
    if not skip_bias_norm:
        return [{"params": params, "weight_decay": weight_decay}]
    decayed = [p for p in params if p.ndim >= 2]
    plain = [p for p in params if p.ndim < 2]
    groups = [{"params": decayed, "weight_decay": weight_decay}]
    groups.append({"params": plain, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


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

    >>> trainer = Trainer(TrainConfig(epochs=2), model=my_model, criterion=nn.MSELoss())  # doctest: +SKIP
    >>> result = trainer.fit((x_train, y_train), (x_val, y_val))                         # doctest: +SKIP
    """

    def __init__(
        self,
        config: TrainConfig | None = None,
        model: nn.Module | None = None,
        *,
        task: Task | None = None,
        criterion: Any = None,
        run: Any = None,
        run_config: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        if model is None:
            raise ConfigError("Trainer needs a model")
        if task is not None and criterion is not None:
            task.criterion = criterion
        config = config or TrainConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self.model = model
        self.raw_model = model
        self.task = task if task is not None else Task(criterion)
        self.run = None if config.fast_dev_run else run
        self.run_config = run_config or {"train": config.to_dict()}
        self.device = distributed.process_device(choose_device(config.device))
        # under torchrun: join the process group; every process runs the same loop in lockstep
        self.world = distributed.init_process_group(self.device)
        self.state = TrainState()
        self.threads: int | None = None
        self.stop_reason = ""
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: LRSchedule | None = None
        self.ema: WeightsEMA | None = None  # with config.ema: the averaged weights
        self._training_weights: dict[str, torch.Tensor] | None = None  # after fit, with ema
        self.early_stopping: EarlyStopping | None = None
        self.top_k: TopKCheckpoints | None = None
        self.data_state: dict[str, Any] = {}  # the data's preprocessing, saved in checkpoints
        self.parameter_count = sum(p.numel() for p in model.parameters())
        self._model_ready = False
        self._accumulated = 1
        self._step_rows: list[tuple[str, Any, int]] = []  # (name, value, step), flushed in bulk
        self._pending_resume: tuple[dict[str, Any], Path] | None = None
        self._stop = _StopRequest()
        self._profiler_step: Any = None
        self._prepared: tuple[Any, tuple[Batches, Batches | None]] | None = None
        self._has_val = False
        self._batch_metric_names: list[str] = []
        self.steps_run = 0  # optimizer steps taken by this process (a resume proves its start)
        self.rows_trained = 0  # training rows this process computed on (its shares under DDP)
        self.rows_per_process: list[int] = []  # every process's rows_trained, after fit
        self.diverged = False
        self.resumed_at: dict[str, int] | None = None
        self._parallel_model: nn.Module | None = None  # DDP or FSDP2 model, while fitting
        self._local_model: nn.Module | None = None  # the model as one process uses it
        self._skeleton: nn.Module | None = None  # FSDP2: the model's structure, on no device
        self._gathered = False  # FSDP2: fit has ended and gathered the model on rank 0
        self._shard_weight = 1.0  # n_r * N / n of this process's share of the batch
        self._agreed_stop = False  # a stop request seen by any process, at the last step

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files and prints (rank 0 of a torchrun launch,
        or the only process)."""
        return self.run is not None and self.world.rank == 0

    # Loop position, kept in ``state`` (these names are what the loop and the docs use).
    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def batch_in_epoch(self) -> int:
        return self.state.batch_in_epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.state.history

    # ------------------------------------------------------------------------------------------
    # What a task says (override here or on the Task).

    def get_criterion(self) -> Any:
        """A loss, a tuple/list of losses, or ``{name: loss | (loss, weight)}``."""
        return self.task.get_criterion(self.raw_model)

    def forward_pass(self, batch: Any) -> tuple[Any, Any]:
        """``(loss, predictions)``; the loss has the criterion's shape (tensor, list or dict)."""
        return self.task.forward_pass(self.model, batch, self._loss_functions)

    def inference(self, batch: Any) -> torch.Tensor:
        """Predictions for a batch, as ``predict`` returns them."""
        return self.task.inference(self.model, batch)

    def batch_metrics(self, predictions: Any, batch: Any) -> dict[str, torch.Tensor]:
        """Extra per-batch metrics (means over the batch), averaged over the epoch."""
        return self.task.batch_metrics(predictions, batch)

    def batch_weight(self, predictions: Any, batch: Any) -> int:
        """How many units the batch's loss and metrics are means over: its rows, or the task's
        count (``Task.batch_weight``: masked-lm's masked tokens)."""
        weight = self.task.batch_weight(predictions, batch)
        return self.batch_size_of(batch) if weight is None else int(weight)

    def epoch_metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Metrics over a whole validation pass (with ``collect_predictions``)."""
        return self.task.epoch_metrics(predictions, targets)

    @property
    def collect_predictions(self) -> bool:
        return self.task.collect_predictions

    def report(self, bundle: Any, run: Any) -> dict[str, Any]:
        """After the test evaluation of a recipe run: extra plots and figures for the summary."""
        return self.task.report(self, bundle, run)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = parameter_groups(params, c.weight_decay, c.wd_skip_bias_norm)
        if c.optimizer == "sgd":
            return torch.optim.SGD(
                groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
            )
        cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        # The fused kernel does the same math in one pass over all parameters: 23% less time per
        # step on the 20-64-32-1 MLP (docs/performance.md). It needs floating-point parameters on
        # the CPU or CUDA.
        betas = (c.beta1, c.beta2)
        fused = self.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        return cls(groups, lr=c.lr, betas=betas, weight_decay=c.weight_decay, fused=fused or None)

    def extra_state(self) -> dict[str, Any]:
        """Task state kept in checkpoints, as tensors and plain data: by default the data's
        preprocessing (``data_state``: a fitted scaler, a label mapping)."""
        return {"data": self.data_state}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        """Counterpart of ``extra_state``."""
        self.data_state = extra.get("data", {})

    # ------------------------------------------------------------------------------------------
    # Set-up. Nothing here seeds or touches the weights.

    def setup(self, example_batch: Any, steps_per_epoch: int) -> None:
        """Threads, device, criterion; then optimizer, schedule, scaler and callbacks."""
        self.setup_model(example_batch)
        self.setup_parallel()
        self.setup_optimization(steps_per_epoch)

    def setup_model(self, example_batch: Any) -> None:
        """Choose threads, move the model to the device, build the criterion (once)."""
        if self._model_ready:
            return
        c = self.config
        flops = None
        if c.threads is None and self.device.type == "cpu":
            inputs = self.task.model_inputs(split_batch(example_batch)[0])
            flops = estimate_flops(self.raw_model, inputs)
        self.threads = choose_threads(flops, c.threads)
        if c.threads is None and self.world.local_size > 1:  # the cores are shared by N processes
            self.threads = max(1, self.threads // self.world.local_size)
        apply_threads(self.threads)
        self.raw_model.to(self.device)
        if c.channels_last:  # the same values, in NHWC order: faster convolutions
            self.raw_model.to(memory_format=torch.channels_last)
        self._params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.criterion = self.get_criterion()
        self._loss_functions = losses.criterion_functions(self.criterion)
        self._loss_weights = losses.criterion_weights(self.criterion)
        self._term_names = losses.term_names(self.criterion)
        amp = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[c.precision]
        self._amp_dtype = amp
        if self.world.size > 1 and self.device.type == "cuda":
            # batch statistics over the global batch, as one process computes them (GPU only)
            self.raw_model = nn.SyncBatchNorm.convert_sync_batchnorm(self.raw_model)
        elif self.world.size > 1 and self.world.rank == 0:
            norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
            if any(isinstance(m, norms) for m in self.raw_model.modules()):
                print(
                    "warning: BatchNorm on the CPU under --devices "
                    f"{self.world.size}: each process normalises with its own share of the "
                    "batch (SyncBatchNorm needs CUDA), so the result differs from one process",
                    file=sys.stderr,
                )
        self.model = torch.compile(self.raw_model) if c.compile else self.raw_model
        self._model_ready = True

    @property
    def fsdp(self) -> bool:
        return self.world.size > 1 and self.config.strategy == "fsdp"

    def setup_parallel(self) -> None:
        """Under torchrun, once: DDP around the model, or (``strategy`` fsdp) the model sharded
        with FSDP2. ``fit`` trains through it; evaluate and predict use the model itself (after
        FSDP2, gathered whole on rank 0)."""
        if self.world.size == 1 or self._parallel_model is not None:
            return
        from mlenv.train.parallel import shard_fsdp, wrap_ddp

        if self.fsdp:
            self._skeleton = copy.deepcopy(self.raw_model).to("meta")
            shard_fsdp(self.raw_model)  # in place: its parameters become shards (DTensors)
            self._params = [p for p in self.raw_model.parameters() if p.requires_grad]
            parallel = self.raw_model
        else:
            self._local_model = self.model
            parallel = wrap_ddp(self.raw_model, self.device)
        self._parallel_model = torch.compile(parallel) if self.config.compile else parallel
        self.model = self._parallel_model

    def _gather_fsdp_model(self) -> None:
        """After an FSDP2 fit: the trained weights, gathered, in a plain model on rank 0 (for
        the test evaluation, the weights file and the report)."""
        from mlenv.train.parallel import full_model_state

        state = full_model_state(self.raw_model)
        self._gathered = True
        if self.world.rank != 0:
            return
        plain = self._skeleton.to_empty(device=self.device)
        plain.load_state_dict(state)
        self.raw_model = plain
        self._params = [p for p in plain.parameters() if p.requires_grad]
        self._local_model = torch.compile(plain) if self.config.compile else plain
        self.model = self._local_model

    def setup_optimization(self, steps_per_epoch: int) -> None:
        """Optimizer, schedule, grad scaler, early stopping and top-k; rebuilt only while no
        optimizer step has been taken."""
        if self.optimizer is not None and self.state.global_step > 0:
            return
        c = self.config
        mode = self.monitor_mode()
        self.optimizer = self.configure_optimizer()
        self.steps_per_epoch = math.ceil(steps_per_epoch / c.accumulate)
        self.scheduler = LRSchedule(
            self.optimizer, dataclasses.replace(c, mode=mode), self.steps_per_epoch
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.precision == "16")
        self.ema = WeightsEMA(self.raw_model, c.ema) if c.ema is not None else None
        self.early_stopping = (
            EarlyStopping(c.patience, mode, c.min_delta, c.monitor) if c.early_stopping else None
        )
        self.top_k = (
            TopKCheckpoints(self.run.checkpoints, c.save_top_k, c.monitor, mode)
            if self.run is not None
            else None
        )

    def monitor_mode(self) -> str:
        """``min`` or ``max`` for ``config.monitor``: given, or inferred from the metric's name."""
        return resolve_mode(
            self.config.monitor, self.config.mode, self.task.metric_modes(), self._term_names
        )

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
        if self._shard_weight != 1.0:  # this process's share of the global batch's mean
            total = total * self._shard_weight
        self.scaler.scale(total).backward()

    def clip_gradients(self) -> torch.Tensor:
        """Unscale (fp16), clip by norm or value when configured; returns the total gradient
        norm before clipping (what is logged as ``step/grad_norm``)."""
        c = self.config
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self._params if p.grad is not None]
        if c.grad_clip is not None and c.grad_clip_mode == "norm":
            norm = torch.nn.utils.clip_grad_norm_(self._params, c.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            if c.grad_clip is not None:
                torch.nn.utils.clip_grad_value_(self._params, c.grad_clip)
        return full_tensor(norm) if self.fsdp else norm

    def optimizer_step(self) -> None:
        """Clip, step (through the grad scaler), zero the gradients, advance the schedule; logs
        the learning rate this step used, its loss (mean over the accumulation group) and the
        gradient norm, one row each per optimizer step."""
        s = self.state
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm = self.clip_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        s.global_step += 1
        self.steps_run += 1
        if self.ema is not None:
            self.ema.update(self.raw_model, s.global_step)
        self.scheduler.step()
        if self.run is not None:
            step = s.global_step
            loss = s.group_loss / max(s.group_batches, 1)
            self._step_rows += [("lr", lr, step), ("loss", loss, step)]
            self._step_rows.append(("grad_norm", grad_norm.detach(), step))
        s.group_loss, s.group_batches = 0.0, 0

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

    def record(
        self, values: dict[str, float], metrics: dict[str, Any], n: int, sums: EpochSums
    ) -> None:
        """Add one batch's loss values and metrics to ``sums``."""
        for name, metric in metrics.items():
            values[name] = float(metric)
        sums.add(values, n)

    def sync_batch(
        self,
        total: torch.Tensor,
        terms: dict[str, torch.Tensor],
        metrics: dict[str, Any],
        rows: int,
        weight: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], int, int]:
        """Under torchrun: the global batch's loss, terms and metrics (means of every process's
        share weighted by its ``weight``: rows, or the task's units), its rows and units, and
        whether any process was asked to stop, in one all-reduce; sets the weight of this
        process's loss in the backward."""
        names = [*terms, *metrics]
        local = [total.detach(), *(t.detach() for t in terms.values())]
        local += [torch.as_tensor(m, device=self.device).detach() for m in metrics.values()]
        weight = weight if rows else 0  # a stand-in row (rows == 0) adds nothing
        vector = torch.zeros(len(local) + 3, dtype=torch.float64, device=self.device)
        vector[: len(local)] = torch.stack([v.reshape(()).double() for v in local]) * weight
        vector[-3] = weight
        vector[-2] = rows
        vector[-1] = 1.0 if self._stop.signal_name else 0.0
        distributed.all_reduce_sum(vector)
        n = int(vector[-2].item())
        self._agreed_stop = bool(vector[-1].item() > 0)
        if self._agreed_stop and self._stop.signal_name is None:
            self._stop.signal_name = "a signal to another process"
        total_weight = int(vector[-3].item())
        self._shard_weight = share_weight(weight, total_weight, self.world.size)
        means = vector[: len(local)] / max(total_weight, 1)
        reduced = dict(zip(names, means[1:], strict=True))
        terms, metrics = {k: reduced[k] for k in terms}, {k: reduced[k] for k in metrics}
        return means[0], terms, metrics, n, total_weight

    def _nonfinite(self, values: dict[str, float], terms: dict[str, torch.Tensor]) -> None:
        from mlenv.train.nonfinite import first_nonfinite_layer

        bad = [name for name in terms if not math.isfinite(values[name])] or ["loss"]
        batch = self._current_batch
        # under the same autocast as the failing step: an fp16 overflow happens only there
        layer = first_nonfinite_layer(self.model, lambda: self.compute_loss(batch))
        kept = " (the last good checkpoint is untouched)" if self.run is not None else ""
        raise TrainingError(
            f"non-finite loss at epoch {self.epoch + 1}, step {self.global_step + 1}: "
            f"term {', '.join(repr(b) for b in bad)} = {values[bad[0]]}; "
            f"first non-finite output: {layer}{kept}"
        )

    @staticmethod
    def batch_size_of(batch: Any) -> int:
        first = split_batch(batch)[0]
        if isinstance(first, dict):
            first = next(iter(first.values()))
        return len(first)

    def iterate(self, batches: Batches, desc: str) -> Iterator[Any]:
        """Batches moved to the device, with a progress bar."""
        from tqdm.auto import tqdm

        on_device = isinstance(batches, TensorBatches) or getattr(batches, "on_device", False)
        if on_device:
            batches.to(self.device)
        total = len(batches) - batches.start
        bar = tqdm(
            batches,
            total=total,
            desc=desc,
            leave=False,
            disable=not (self.config.progress and sys.stderr.isatty() and self.world.rank == 0),
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
        s = self.state
        accumulate = self.config.accumulate
        n_batches = len(batches)
        started = time.perf_counter()
        sharded = isinstance(batches, ShardedBatches)
        for batch in self.iterate(batches, f"epoch {s.epoch + 1}"):
            self._current_batch = batch
            total, terms, predictions = self.compute_loss(batch)
            with torch.no_grad():
                metrics = self.batch_metrics(predictions, batch)
            size = self.batch_size_of(batch)
            weight = self.batch_weight(predictions, batch)
            if sharded:  # the global batch's loss, metrics, size and units, on every process
                self.rows_trained += batches.rows
                reduced, terms, metrics, size, weight = self.sync_batch(
                    total, terms, metrics, batches.rows, weight
                )
                values = self.loss_values(reduced, terms)
            else:
                self.rows_trained += size
                values = self.loss_values(total, terms)
            group_start = s.batch_in_epoch - s.batch_in_epoch % accumulate
            self._accumulated = min(accumulate, n_batches - group_start)
            self.backward(total)
            self.record(values, metrics, weight, s.sums)
            s.group_loss += values["loss"]
            s.group_batches += 1
            s.batch_in_epoch += 1
            s.samples_in_epoch += size
            if s.batch_in_epoch % accumulate == 0 or s.batch_in_epoch == n_batches:
                self.optimizer_step()
                self.after_optimizer_step()
            if self._agreed_stop if sharded else self._stop.signal_name:
                s.train_seconds_in_epoch += time.perf_counter() - started
                self._save_and_exit()
        s.train_seconds_in_epoch += time.perf_counter() - started
        return s.sums.means("train")

    @torch.no_grad()
    def validate_epoch(self, batches: Batches, prefix: str = "val") -> dict[str, float]:
        """One pass without gradients; returns ``<prefix>_*`` means."""
        self.model.eval()
        sums = EpochSums()
        collected: list[Any] = []
        sharded = isinstance(batches, ShardedBatches)
        for batch in self.iterate(batches, prefix):
            self._current_batch = batch
            total, terms, predictions = self.compute_loss(batch)  # every process, every batch
            if sharded and batches.rows == 0:  # a stand-in row: nothing to count
                if self.collect_predictions:
                    collected.append(None)
                continue
            metrics = self.batch_metrics(predictions, batch)
            weight = self.batch_weight(predictions, batch)
            self.record(self.loss_values(total, terms), metrics, weight, sums)
            if self.collect_predictions:
                collected.append((predictions.float().cpu(), split_batch(batch)[1].cpu()))
        if sharded:  # every process's sums and predictions, as one process has them
            from mlenv.train.parallel import gather_validation

            sums.totals, sums.count, collected = gather_validation(
                sums.totals, sums.count, collected
            )
        means = sums.means(prefix)
        self._batch_metric_names = list(sums.totals)
        if collected:
            predictions = torch.cat([p for p, _ in collected])
            targets = torch.cat([t for _, t in collected])
            extra = self.epoch_metrics(predictions, targets)
            means.update({f"{prefix}_{k}": v for k, v in extra.items()})
        return means

    # ------------------------------------------------------------------------------------------
    # fit / evaluate / predict.

    def _batches(self, data: Any, shuffle: bool, limit: int | None = None) -> Batches:
        return make_batches(data, self.config.batch_size, shuffle, self.config.seed, limit)

    def prepare(self, train_data: Any, val_data: Any = None) -> tuple[Batches, Batches | None]:
        """Batches, set-up, any resume, and the monitor check: everything before the first step.
        Raises before anything is trained or written when the configuration cannot apply."""
        if self._prepared is not None and self._prepared[0] == (id(train_data), id(val_data)):
            return self._prepared[1]
        c = self.config
        self._has_val = val_data is not None
        limit = 1 if c.fast_dev_run else c.limit_batches
        train = self._batches(train_data, shuffle=True, limit=limit)
        val = self._batches(val_data, shuffle=False, limit=limit) if val_data is not None else None
        if c.overfit_batches:
            train = self._overfit_subset(train)
            val = train
        if self.world.size > 1:  # this process's share of every global batch
            w = self.world
            train = ShardedBatches(train, w.rank, w.size)
            val = ShardedBatches(val, w.rank, w.size) if val is not None else None
        fresh = self.state.global_step == 0 and self.state.epoch == 0
        if fresh and not c.resume and self._pending_resume is None:
            # Dropout and a user DataLoader's order follow the seed (and the rank: each process
            # draws its own dropout masks); the weights are the model's.
            seed_everything(c.seed + self.world.rank, c.deterministic)
        example = self._first_batch(train)
        self.setup(self.to_device(example), len(train))
        if self._parallel_model is not None:  # fit trains through DDP
            self.model = self._parallel_model
        if self._pending_resume is not None:
            self.restore(*self._pending_resume)
            self._pending_resume = None
        elif c.resume and fresh:
            self.resume_from(c.resume)
        self.check_monitor(val if val is not None else train)
        self._prepared = ((id(train_data), id(val_data)), (train, val))
        return train, val

    def _first_batch(self, batches: Batches) -> Any:
        """The first batch without disturbing any RNG (a shuffling DataLoader draws from it)."""
        rng = capture_rng_state()
        try:
            return next(iter(batches))
        except StopIteration:
            raise ConfigError("the training data is empty") from None
        finally:
            restore_rng_state(rng)

    def check_monitor(self, probe_data: Batches) -> None:
        """``config.monitor`` must name a metric the epochs will produce, whenever something reads
        it (early stopping, the plateau schedule, best/top-k checkpoints)."""
        c = self.config
        needed = c.early_stopping or c.scheduler == "plateau" or self.top_k is not None
        if not needed:
            return
        rng = capture_rng_state()
        try:
            probe = self._probe_metrics(probe_data)
        finally:
            restore_rng_state(rng)
        known = {f"train_{k}" for k in self._batch_metric_names} | {"lr", "samples_per_s"}
        if self._has_val:
            known |= set(probe)
        if c.monitor not in known:
            if c.monitor.startswith("val_") and not self._has_val:
                raise ConfigError(
                    f"monitor: {c.monitor!r} needs validation data, and there is none; "
                    f"monitor a train_* metric or give validation data"
                )
            raise ConfigError(
                f"monitor: {c.monitor!r} is not a metric of this run; "
                f"metrics: {', '.join(sorted(known))}"
            )

    def _probe_metrics(self, data: Batches) -> dict[str, float]:
        """Metric names from one batch in evaluation mode (weights and RNG untouched)."""
        batch = self.to_device(self._first_batch(data))
        was_training = self.model.training
        try:
            return self.validate_epoch(_OneBatch(batch), "val")
        finally:
            self.model.train(was_training)

    def fit(self, train_data: Any, val_data: Any = None) -> FitResult:
        """Train for ``config.epochs`` (or until stopped); ``val_data`` is optional."""
        c = self.config
        epochs = 1 if c.fast_dev_run else c.epochs
        if self.state.epoch >= epochs:
            raise TrainingError(
                f"fit: this trainer has already trained {self.state.epoch} of {epochs} epochs; "
                "raise config.epochs to train further (or make a new Trainer)"
            )
        if self.fsdp and self._gathered:
            raise TrainingError(
                "fit: under --strategy fsdp a Trainer fits once (its model is then gathered "
                "on rank 0); make a new Trainer to train further"
            )
        train, val = self.prepare(train_data, val_data)
        self._prepared = None  # a later fit() prepares its data again
        if self._training_weights is not None:  # a later fit continues the trained weights
            load_model_state(self.raw_model, self._training_weights, "the trained weights")
            self._training_weights = None
        self._train_batches = train
        if c.plot_lr and self.writes:
            from mlenv.train.schedules import plot_schedule

            plot_schedule(c, self.steps_per_epoch, self.run.plots / "lr_schedule.png")
        start = time.perf_counter()
        self.stop_reason = f"completed {epochs} epochs"
        try:
            with _StopRequest() as self._stop, self._profiler() as profiler:
                self._profiler_step = profiler.step if profiler is not None else None
                while self.state.epoch < epochs:
                    try:
                        metrics = self._run_epoch(train, val)
                    except Diverged as exc:  # stop at once; the last checkpoint is the last good
                        self.stop_reason = str(exc)
                        self.diverged = True
                        if self.world.rank == 0:
                            print(f"mlenv: {exc}", file=sys.stderr)
                        break
                    reason = self._epoch_end(metrics)
                    if reason:
                        self.stop_reason = reason
                        break
        finally:
            if self._local_model is not None:  # evaluate and predict run in one process
                self.model = self._local_model
        self.rows_per_process = distributed.all_gather_object(self.rows_trained)
        if self.ema is not None:  # from now on the model is what was validated: the average
            self._training_weights = {
                k: v.detach().clone()
                for k, v in strip_compile_prefix(self.raw_model.state_dict()).items()
            }
            self.ema.load_into(self.raw_model)
        if self.fsdp:
            self._gather_fsdp_model()
        self.flush_steps()
        best = {}
        if self.top_k is not None and self.top_k.kept:
            value, name = self.top_k.kept[0]
            best = {c.monitor: value, "checkpoint": name}
        return FitResult(self.history, self.stop_reason, best, time.perf_counter() - start)

    def after_optimizer_step(self) -> None:
        """Step-level checkpoints and the profiler's clock."""
        if self._profiler_step is not None:
            self._profiler_step()
        every = self.config.save_every_steps
        if self.run is not None and every and self.global_step % every == 0:
            self.save("last")

    def ema_weights(self) -> contextlib.AbstractContextManager[Any]:
        """With ``config.ema``: the averaged weights in the model for the duration (the
        validation pass), then the training weights again."""
        if self.ema is None:
            return contextlib.nullcontext()
        return self.ema.swapped_in(self.raw_model)

    def _run_epoch(self, train: Batches, val: Batches | None) -> dict[str, float]:
        s = self.state
        epoch_start = time.perf_counter()
        train.set_epoch(s.epoch, start=s.batch_in_epoch)
        if isinstance(train, LoaderBatches):
            train.replay = s.data_order if s.batch_in_epoch else None
        metrics: dict[str, Any] = {"epoch": s.epoch + 1, **self.train_epoch(train)}
        if s.train_seconds_in_epoch > 0:
            metrics["samples_per_s"] = s.samples_in_epoch / s.train_seconds_in_epoch
        if val is not None:
            val.set_epoch(s.epoch)
            with self.ema_weights():
                metrics.update(self.validate_epoch(val))
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["seconds"] = time.perf_counter() - epoch_start
        return metrics

    def _epoch_end(self, metrics: dict[str, float]) -> str:
        """After validation: schedule, early stopping, history, logs, checkpoints, in that order."""
        c = self.config
        s = self.state
        s.epoch += 1
        s.batch_in_epoch = s.samples_in_epoch = 0
        s.train_seconds_in_epoch = 0.0
        s.sums = EpochSums()
        s.data_order = None
        monitored = metrics.get(c.monitor)
        self.scheduler.epoch_end(monitored)
        reason = ""
        if self.early_stopping is not None and monitored is not None:
            reason = self.early_stopping.update(monitored) or ""
        s.stop_reason = reason
        s.history.append(metrics)
        self.log_epoch(metrics)
        due = s.epoch % c.save_every == 0 or s.epoch == c.epochs or reason
        if self.run is not None and (due or self.top_k is not None):
            ranked = None
            if monitored is not None and self.top_k is not None:
                ranked = self.top_k.rank(s.epoch, monitored)
            if due or ranked is not None:
                data = self.save("last")
                if ranked is not None and self.writes:
                    self.top_k.write(ranked, data)
        return reason

    def log_epoch(self, metrics: dict[str, float]) -> None:
        """One line per epoch on the terminal (with ``progress``), and the run folder's files."""
        if self.config.progress and self.world.rank == 0:
            shown = "  ".join(
                f"{k} {v:.4g}"
                for k, v in metrics.items()
                if k.endswith(("loss", "acc", "auc")) and isinstance(v, float)
            )
            total = 1 if self.config.fast_dev_run else self.config.epochs
            print(f"epoch {self.epoch}/{total}  {shown}  ({metrics['seconds']:.2f} s)", flush=True)
        if not self.writes:
            return
        self.flush_steps()
        self.run.log_epoch(metrics, self.epoch, self.global_step)
        self.run.write_metrics(self.history)

    def flush_steps(self) -> None:
        """Hand the buffered per-step values to the run (TensorBoard, store) in one go."""
        if not self.writes or not self._step_rows:
            self._step_rows = []
            return
        rows = [(n, float(v), step) for n, v, step in self._step_rows]
        self._step_rows = []
        self.run.log_steps(rows)

    @torch.no_grad()
    def evaluate(self, data: Any, prefix: str = "test") -> dict[str, float]:
        """Mean loss and metrics over ``data``: ``{"test_loss": ..., ...}``. The weights are
        used as they are."""
        batches = self._batches(data, shuffle=False)
        self.setup_model(self.to_device(self._first_batch(batches)))
        return self.validate_epoch(batches, prefix)

    @torch.no_grad()
    def predict(self, data: Any) -> torch.Tensor:
        """``inference`` over every batch, concatenated, on the CPU."""
        batches = self._batches(data, shuffle=False)
        self.setup_model(self.to_device(self._first_batch(batches)))
        self.model.eval()
        outputs = [
            self.inference(batch).float().cpu() for batch in self.iterate(batches, "predict")
        ]
        return torch.cat(outputs)

    # ------------------------------------------------------------------------------------------
    # Checkpoints.

    def pending_gradients(self) -> dict[str, torch.Tensor]:
        """Gradients accumulated inside an unfinished accumulation group (else empty)."""
        if self.state.batch_in_epoch % self.config.accumulate == 0:
            return {}
        return {
            name: full_tensor(p.grad.detach()).clone()  # FSDP2: gathered whole
            for name, p in self.raw_model.named_parameters()
            if p.grad is not None
        }

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        s.early_stopping = self.early_stopping.state_dict() if self.early_stopping else None
        s.top_k = self.top_k.state_dict() if self.top_k else None
        if isinstance(getattr(self, "_train_batches", None), LoaderBatches):
            s.data_order = self._train_batches.order_state
        if self.fsdp and not self._gathered:  # sharded: gathered whole on rank 0
            from mlenv.train.parallel import full_model_state, full_optimizer_state

            model = full_model_state(self.raw_model)
            optimizer = full_optimizer_state(self.raw_model, self.optimizer)
        else:
            model = strip_compile_prefix(self.raw_model.state_dict())
            optimizer = self.optimizer.state_dict()
        averaged = {}
        if self.ema is not None:  # "model" is what is evaluated and shared: the average
            averaged = {"training_weights": self._training_weights or model}
            model = self.ema.state
        return {
            **averaged,
            "model": model,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            **self._rng_of_every_process(),
            "state": s.state_dict(),
            "grads": self.pending_gradients(),
            "config": self.run_config,
            "extra": self.extra_state(),
        }

    def _rng_of_every_process(self) -> dict[str, Any]:
        """Under torchrun: every process's RNG states (each draws its own dropout masks), so a
        resume with as many processes continues each one's stream."""
        if self.world.size == 1:
            return {}
        return {"rng_ranks": distributed.all_gather_object(capture_rng_state())}

    def save(self, name: str = "last") -> bytes:
        """Write ``checkpoints/<name>.pt`` atomically; returns the bytes (for top-k copies).
        The values logged so far are flushed first, so the logs never run behind a checkpoint.
        Under torchrun every process calls it (it gathers their RNG states); rank 0 writes, the
        others get ``b""``."""
        from mlenv.train.checkpoint import FORMAT_VERSION, atomic_write_bytes

        self.flush_steps()
        state = self.state_dict()
        if not self.writes:  # every process holds the same weights and loop state
            return b""
        data = serialize({"format_version": FORMAT_VERSION, **state})
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
        self.restore(load_checkpoint(path), path)

    def resume_with(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Restore from an already loaded (and validated) checkpoint when ``fit`` starts."""
        self._pending_resume = (checkpoint, Path(path))

    def restore(self, checkpoint: dict[str, Any], path: str | Path) -> None:
        """Weights, optimizer, schedule, scaler, loop state, pending gradients, RNG."""
        sharded = self.fsdp and not self._gathered
        averaged = "training_weights" in checkpoint
        if averaged != (self.ema is not None):
            raise CheckpointError(
                f"{path}: was saved {'with' if averaged else 'without'} --ema; resume it "
                f"{'with the same --ema' if averaged else 'without --ema'}"
            )
        if sharded:
            from mlenv.train.parallel import load_full_model_state

            load_full_model_state(self.raw_model, checkpoint["model"], path)
        elif averaged:  # the training weights go on training; "model" holds their average
            load_model_state(self.raw_model, checkpoint["training_weights"], path)
            self.ema.load(checkpoint["model"], path)
            self._training_weights = None
        else:
            load_model_state(self.raw_model, checkpoint["model"], path)
        try:
            if sharded:
                from mlenv.train.parallel import load_full_optimizer_state

                load_full_optimizer_state(self.raw_model, self.optimizer, checkpoint["optimizer"])
            else:
                self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.scaler.load_state_dict(checkpoint["scaler"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: optimizer state does not fit this run ({exc})"
            ) from None
        self.state = TrainState()
        self.state.load_state_dict(checkpoint["state"])
        s = self.state
        if self.early_stopping is not None and s.early_stopping:
            self.early_stopping.load_state_dict(s.early_stopping)
        if self.top_k is not None and s.top_k:
            self.top_k.load_state_dict(s.top_k)
        params = dict(self.raw_model.named_parameters())
        for name, grad in checkpoint.get("grads", {}).items():
            params[name].grad = like_parameter(params[name], grad)
        self.load_extra_state(checkpoint.get("extra", {}))
        self._restore_rng(checkpoint)
        self.resumed_at = {
            "epoch": s.epoch,
            "batch_in_epoch": s.batch_in_epoch,
            "global_step": s.global_step,
        }

    def _restore_rng(self, checkpoint: dict[str, Any]) -> None:
        """This process's RNG states: its own when the checkpoint has one per process for as
        many processes; else rank 0's, with the rank folded into torch's seed so processes do
        not draw the same dropout masks."""
        w = self.world
        per_rank = checkpoint.get("rng_ranks") or []
        if w.size > 1 and len(per_rank) == w.size:
            restore_rng_state(per_rank[w.rank])
            return
        restore_rng_state(checkpoint["rng"])
        if w.rank > 0:
            torch.manual_seed(int(torch.randint(0, 2**62, ())) + w.rank)

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
        if isinstance(chunks[0], dict):  # dict batches: the same keys, concatenated
            keys = list(chunks[0])
            tensors = [torch.cat([c[k] for c in chunks]) for k in keys]
            return TensorBatches(
                tensors, self.config.batch_size, shuffle=False, seed=self.config.seed, keys=keys
            )
        tensors = [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]
        return TensorBatches(tensors, self.config.batch_size, shuffle=False, seed=self.config.seed)

    def _profiler(self) -> contextlib.AbstractContextManager[Any]:
        if not self.config.profile or not self.writes:
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


class _OneBatch(Batches):
    """One batch already on the device, as ``Batches`` (for the monitor probe)."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[Any]:
        yield self.batch


class Diverged(TrainingError):
    """A training loss above ``divergence_threshold``: the run stops at once, cleanly."""


class TrainingInterrupted(TrainingError):
    """The run was stopped by a signal after saving its checkpoint."""
