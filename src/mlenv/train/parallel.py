"""Data parallelism for the Trainer under torchrun: N processes take the optimizer steps that one
process takes with the same batch size and the same data order.

The global order is the single process's (``epoch_permutation(seed, epoch)``, set each epoch with
``set_epoch``, as ``DistributedSampler.set_epoch`` does). Each global batch is split into N
contiguous shards and process r trains shard r (``ShardedBatches``). A shard's loss is a mean over
its ``w_r`` units: its rows, or what the task's ``batch_weight`` counts (masked-lm: its masked
tokens). Before backward the loss of shard r is weighted by ``w_r * N / W`` (``share_weight``; W
the global batch's units), so once DDP has averaged the gradients they are the gradient of the
global batch's mean loss over all its units, also when the last batch does not split evenly. A
process whose shard is empty (a batch of fewer than N rows) runs one row with weight 0, so every
process takes part in every gradient all-reduce.

Everything the loop decides on (the loss of a step, metrics, a stop request) is reduced over the
processes first, so every process makes the same decision at the same step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from mlenv.data.batching import (
    Batches,
    DatasetBatches,
    LoaderBatches,
    TensorBatches,
    epoch_permutation,
)
from mlenv.errors import ConfigError
from mlenv.runtime.distributed import all_gather_object


def shard_sizes(n: int, size: int) -> list[int]:
    """Rows of each of ``size`` shards of ``n`` rows (as ``tensor_split``: the first get one more).

    >>> shard_sizes(5, 2)
    [3, 2]
    """
    base, extra = divmod(n, size)
    return [base + (r < extra) for r in range(size)]


def share_weight(weight: float, total: float, size: int) -> float:
    """The factor of one process's loss before backward, ``w_r * N / W``: DDP's mean of the
    gradients over the N processes is then ``sum_r w_r * grad_r / W``, the gradient of the mean
    over all W units of the global batch; 0 when it has none (its loss is 0 then).

    >>> share_weight(3, 8, 2)  # 3 of the global batch's 8 units, 2 processes
    0.75
    """
    return weight * size / total if total > 0 else 0.0


def _rows(batch: Any) -> int:
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    first = next(t for t in batch if isinstance(t, torch.Tensor))
    return len(first)


def shard_of(batch: Any, rank: int, size: int) -> tuple[Any, int]:
    """Process ``rank``'s contiguous share of a batch (a tuple, list or dict of tensors sharing
    their first dimension) and how many rows it really holds; an empty share is the batch's first
    row, to be weighted 0."""
    sizes = shard_sizes(_rows(batch), size)
    rows = sizes[rank]
    start, stop = (sum(sizes[:rank]), sum(sizes[: rank + 1])) if rows else (0, 1)

    def cut(t: Any) -> Any:
        return t[start:stop] if isinstance(t, torch.Tensor) else t

    if isinstance(batch, Mapping):
        return {k: cut(v) for k, v in batch.items()}, rows
    return type(batch)(cut(t) for t in batch), rows


class _ShardBatchSampler(Sampler[list[int]]):
    """The sample indices of this process's share of each global batch of a ``DatasetBatches``:
    a DistributedSampler that keeps the single process's batches."""

    def __init__(self, owner: ShardedBatches) -> None:
        self.owner = owner

    def __len__(self) -> int:
        return len(self.owner) - self.owner.start

    def __iter__(self) -> Iterator[list[int]]:
        o = self.owner
        inner: DatasetBatches = o.inner  # type: ignore[assignment]
        order = (
            epoch_permutation(inner.n, inner.seed, o.epoch)
            if inner.shuffle
            else torch.arange(inner.n)
        )
        bs = inner.batch_size
        for i in range(o.start, len(o)):
            indices = order[i * bs : (i + 1) * bs]
            share = indices.tensor_split(o.size)[o.rank]
            yield (share if len(share) else indices[:1]).tolist()


class ShardedBatches(Batches):
    """This process's share of every global batch of ``inner``; ``rows`` is how many real rows
    the batch last yielded holds (0: a stand-in row, weighted 0)."""

    def __init__(self, inner: Batches, rank: int, size: int) -> None:
        if isinstance(inner, LoaderBatches):
            raise ConfigError(
                "--devices: a DataLoader's own order cannot be split over processes; give "
                "tensors, a dict of tensors or a Dataset (mlenv batches and shards them)"
            )
        self.inner = inner
        self.rank = rank
        self.size = size
        self.seed = inner.seed
        self.rows = 0
        self.limit = getattr(inner, "limit", None)
        self._loader: DataLoader | None = None
        if isinstance(inner, DatasetBatches):
            source = inner.loader
            self._loader = DataLoader(
                source.dataset,
                batch_sampler=_ShardBatchSampler(self),
                num_workers=source.num_workers,
                collate_fn=source.collate_fn,
                worker_init_fn=source.worker_init_fn,
                generator=source.generator,
            )

    @property
    def on_device(self) -> bool:
        """In-memory tensors (moved to the device once, then sliced)."""
        return isinstance(self.inner, TensorBatches)

    def to(self, device: torch.device) -> ShardedBatches:
        self.inner.to(device)  # type: ignore[attr-defined]
        return self

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch, start)
        self.inner.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        if self._loader is not None:
            inner: DatasetBatches = self.inner  # type: ignore[assignment]
            for i, batch in enumerate(self._loader, start=self.start):
                n = min(inner.batch_size, inner.n - i * inner.batch_size)
                self.rows = shard_sizes(n, self.size)[self.rank]
                yield batch
            return
        for batch in self.inner:
            shard, self.rows = shard_of(batch, self.rank, self.size)
            yield shard


def merge_gathered(
    parts: list[tuple[dict[str, float], int, list[Any]]],
) -> tuple[dict[str, float], int, list[Any]]:
    """Validation sums of every process (``(totals, count, per-batch collected)``, in rank
    order) as one process would have them: totals and counts added, the collected predictions of
    each batch in the order of its rows (shard 0 first)."""
    totals: dict[str, float] = {}
    count = 0
    for part_totals, part_count, _ in parts:
        for key, value in part_totals.items():
            totals[key] = totals.get(key, 0.0) + value
        count += part_count
    collected = [
        entry
        for batch in zip(*(collected for _, _, collected in parts), strict=True)
        for entry in batch
        if entry is not None
    ]
    return totals, count, collected


def gather_validation(
    totals: dict[str, float], count: int, collected: list[Any]
) -> tuple[dict[str, float], int, list[Any]]:
    return merge_gathered(all_gather_object((totals, count, collected)))


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (its parameters are rank 0's from here on:
    DDP broadcasts them)."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


# ----------------------------------------------------------------------------------------------
# FSDP2: parameters, gradients and optimizer state sharded over the processes.


def shard_fsdp(model: nn.Module) -> nn.Module:
    """``fully_shard`` every block (a module with parameters held in an ``nn.ModuleList`` or
    ``nn.Sequential``: transformer blocks, the layers of an MLP), innermost first, then the
    whole model; each block's parameters are gathered only while it runs."""
    from torch.distributed.fsdp import fully_shard

    blocks = [
        (name, module)
        for name, module in model.named_modules()
        if name
        and isinstance(model.get_submodule(name.rpartition(".")[0]), nn.ModuleList | nn.Sequential)
        and any(True for _ in module.parameters())
    ]
    for _, block in sorted(blocks, key=lambda item: -item[0].count(".")):
        fully_shard(block)
    fully_shard(model)
    return model


def _full_options(**extra: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state as plain tensors on the CPU, on rank 0 (``{}`` elsewhere): what a
    single process's ``state_dict`` holds. Every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: Any) -> None:
    """Load a single process's state (every process holds all of it) into a sharded model,
    after checking every name and shape."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    from mlenv.errors import CheckpointError

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    if expected != given:
        wrong = sorted(k for k in expected.keys() | given.keys() if expected.get(k) != given.get(k))
        raise CheckpointError(f"{path}: does not fit the model: {', '.join(wrong)}")
    set_model_state_dict(model, dict(state), options=_full_options())  # it replaces the values


def _parameter_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state on rank 0 (``{}`` elsewhere), keyed as a single process's
    ``optimizer.state_dict()`` (parameters by position), so a checkpoint reads the same
    whichever way it was trained. Every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    if not state:
        return {}
    index = {name: i for i, name in enumerate(_parameter_names(model))}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Counterpart of ``full_optimizer_state`` (every process holds all of ``state``)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _parameter_names(model)
    by_name = {
        "state": {names[int(i)]: dict(value) for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_full_options())


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) value gathered whole; a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like_parameter(parameter: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (whole) placed as ``parameter`` is: sharded the same way when it is a DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(parameter, DTensor):
        return distribute_tensor(
            value.to(parameter.device), parameter.device_mesh, parameter.placements
        )
    return value.to(parameter.device)
