"""Batching with a data order that is a pure function of (seed, epoch), so a run can resume mid-epoch.

Data that fits in memory is batched as tensors: one permutation per epoch, then slices, which are
views (no per-sample ``__getitem__``, no collate). A ``Dataset`` goes through a ``DataLoader`` with
a sampler built on the same permutation. A ``DataLoader`` the user built is used as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of ``epoch``: the same on every machine for the same (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class Batches:
    """Common interface: ``set_epoch``, ``skip`` (batches to skip after a resume), ``len``."""

    seed: int
    epoch: int = 0
    start: int = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start


class TensorBatches(Batches):
    """Batches of in-memory tensors sharing a first dimension: ``(x, y)`` or ``(x,)``.

    >>> b = TensorBatches((torch.arange(10.0),), batch_size=4, shuffle=False)
    >>> [len(x) for (x,) in b]
    [4, 4, 2]
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        limit: int | None = None,
        keys: list[str] | None = None,
    ) -> None:
        sizes = {len(t) for t in tensors}
        if len(sizes) != 1:
            raise ValueError(f"tensors must share their first dimension, got sizes {sorted(sizes)}")
        self.tensors = tuple(tensors)
        self.n = sizes.pop()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.limit = limit
        self.keys = keys  # batches are dicts with these keys (``fit({"x": x, "y": y})``)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        count = full if (self.drop_last or rest == 0) else full + 1
        return min(count, self.limit) if self.limit is not None else count

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        tensors = self.tensors
        if self.shuffle:
            order = epoch_permutation(self.n, self.seed, self.epoch)
            tensors = tuple(t[order] for t in tensors)
        bs = self.batch_size
        for i in range(self.start, len(self)):
            batch = tuple(t[i * bs : (i + 1) * bs] for t in tensors)
            yield dict(zip(self.keys, batch, strict=True)) if self.keys else batch

    def to(self, device: torch.device) -> TensorBatches:
        self.tensors = tuple(t.to(device) for t in self.tensors)
        return self


class _EpochSampler(Sampler[int]):
    def __init__(self, owner: DatasetBatches) -> None:
        self.owner = owner

    def __len__(self) -> int:
        return self.owner.n

    def __iter__(self) -> Iterator[int]:
        o = self.owner
        order = epoch_permutation(o.n, o.seed, o.epoch) if o.shuffle else torch.arange(o.n)
        return iter(order[o.start * o.batch_size :].tolist())


class DatasetBatches(Batches):
    """A ``Dataset`` through a ``DataLoader`` whose order follows ``epoch_permutation``."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        limit: int | None = None,
        num_workers: int = 0,
    ) -> None:
        from mlenv.runtime.seed import seed_worker

        self.n = len(dataset)  # type: ignore[arg-type]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.limit = limit
        generator = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=_EpochSampler(self),
            num_workers=num_workers,
            worker_init_fn=seed_worker,
            generator=generator,
        )

    def __len__(self) -> int:
        count = -(-self.n // self.batch_size)
        return min(count, self.limit) if self.limit is not None else count

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.loader, start=self.start):
            if i >= len(self):
                break
            yield batch


class LoaderBatches(Batches):
    """A user's own ``DataLoader``: its order is its own. A shuffling loader draws its permutation
    from the global torch RNG (or its own generator) when the epoch's iterator starts, so those
    RNG states are kept (``order_state``, saved in checkpoints); a mid-epoch resume sets them
    again (``replay``), draws the same permutation, skips the batches already trained and then
    puts back the RNG state the checkpoint restored."""

    def __init__(self, loader: DataLoader, limit: int | None = None) -> None:
        self.loader = loader
        self.limit = limit
        self.seed = 0
        self.order_state: dict[str, Any] | None = None
        self.replay: dict[str, Any] | None = None

    def __len__(self) -> int:
        count = len(self.loader)
        return min(count, self.limit) if self.limit is not None else count

    def _generators(self) -> dict[str, torch.Generator]:
        found = {}
        for name, owner in (("loader", self.loader), ("sampler", self.loader.sampler)):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator):
                found[name] = generator
        return found

    def _capture(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        state.update({name: g.get_state() for name, g in self._generators().items()})
        return state

    def _apply(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        for name, generator in self._generators().items():
            if name in state:
                generator.set_state(state[name])

    def __iter__(self) -> Iterator[Any]:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        replay, self.replay = self.replay, None
        if replay is not None:
            now = self._capture()
            self._apply(replay)
        self.order_state = self._capture()
        iterator = iter(self.loader)
        position = 0
        if replay is not None:
            # the permutation is drawn at the first batch: draw it as the original epoch did
            for _ in range(self.start):
                next(iterator, None)
            position = self.start
            self._apply(now)
        for i, batch in enumerate(iterator, start=position):
            if i >= len(self):
                break
            if i >= self.start:
                yield batch


def make_batches(
    data: Any,
    batch_size: int,
    shuffle: bool,
    seed: int,
    limit: int | None = None,
) -> Batches:
    """Wrap tensors (a tuple, or a dict of named tensors), a ``TensorDataset``, a ``Dataset`` or
    a ``DataLoader`` as ``Batches``."""
    if isinstance(data, Batches):
        data.limit = limit if limit is not None else getattr(data, "limit", None)
        if getattr(data, "batch_size", 0) is None:  # a sampler that takes the run's batch size
            data.batch_size = batch_size
        return data
    if isinstance(data, torch.Tensor):
        data = (data,)
    if isinstance(data, Mapping) and all(isinstance(t, torch.Tensor) for t in data.values()):
        return TensorBatches(
            list(data.values()), batch_size, shuffle, seed, limit=limit, keys=list(data)
        )
    if isinstance(data, TensorDataset):
        data = data.tensors
    if isinstance(data, list | tuple) and all(isinstance(t, torch.Tensor) for t in data):
        return TensorBatches(data, batch_size, shuffle=shuffle, seed=seed, limit=limit)
    if isinstance(data, DataLoader):
        return LoaderBatches(data, limit=limit)
    if isinstance(data, Dataset):
        return DatasetBatches(data, batch_size, shuffle=shuffle, seed=seed, limit=limit)
    raise TypeError(
        "data must be tensors (x, y), a dict of tensors, a TensorDataset, a Dataset or a "
        "DataLoader, "
        f"got {type(data).__name__}"
    )
