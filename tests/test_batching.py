"""Batching: the order is a function of (seed, epoch), every sample comes once per epoch, the last
partial batch is kept unless drop_last, and a resume at batch k yields what the epoch had left."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mlenv.data.batching import DatasetBatches, LoaderBatches, TensorBatches, make_batches


class Rows(Dataset):
    """A plain Dataset (not a TensorDataset) of the numbers 0 .. n-1."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


def epoch(batches, number: int, start: int = 0) -> list[list[int]]:
    """The sample ids of each batch of epoch ``number`` from batch ``start`` on."""
    batches.set_epoch(number, start)
    out = []
    for batch in batches:
        x = batch[0] if isinstance(batch, tuple | list) else batch
        out.append(x.tolist())
    return out


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def test_every_sample_once_per_epoch_in_an_order_set_by_seed_and_epoch() -> None:
    ids = torch.arange(10)
    b = TensorBatches((ids, ids * 10), batch_size=4, seed=3)
    first = epoch(b, 0)
    assert [len(x) for x in first] == [4, 4, 2] and len(b) == 3  # the last partial batch kept
    assert sorted(flat(first)) == list(range(10))  # each sample once
    assert flat(first) != list(range(10))  # shuffled
    for (x, y), xs in zip(b, epoch(b, 0), strict=True):  # x and y stay paired
        assert (y == x * 10).all() and x.tolist() == xs
    assert epoch(b, 0) == first  # the same (seed, epoch): the same order
    second = epoch(b, 1)
    assert sorted(flat(second)) == list(range(10)) and second != first  # a new epoch
    other_seed = TensorBatches((ids,), batch_size=4, seed=4)
    assert epoch(other_seed, 0) != first
    assert epoch(b, 1, start=2) == second[2:]  # a resume at batch 2 of epoch 1


def test_drop_last_and_a_size_that_divides_evenly() -> None:
    ids = torch.arange(10)
    dropped = TensorBatches((ids,), batch_size=4, seed=0, drop_last=True)
    got = epoch(dropped, 0)
    assert len(dropped) == 2 and [len(x) for x in got] == [4, 4]
    even = TensorBatches((torch.arange(8),), batch_size=4, seed=0)
    assert len(even) == 2 and [len(x) for x in epoch(even, 0)] == [4, 4]  # no empty third batch
    plain = make_batches((ids,), batch_size=4, shuffle=False, seed=0)
    assert epoch(plain, 5) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # evaluation: file order
    assert len(make_batches((ids,), batch_size=4, shuffle=True, seed=0, limit=2)) == 2


def test_a_dataset_follows_the_same_order_as_tensors() -> None:
    tensors = TensorBatches((torch.arange(10),), batch_size=4, seed=7)
    dataset = DatasetBatches(Rows(10), batch_size=4, seed=7)
    assert len(dataset) == 3
    for number in (0, 1):
        assert epoch(dataset, number) == epoch(tensors, number)
    assert epoch(dataset, 1) != epoch(dataset, 0)
    assert epoch(dataset, 1, start=1) == epoch(tensors, 1)[1:]  # resumed at batch 1
    plain = make_batches(Rows(10), batch_size=4, shuffle=False, seed=0)
    assert isinstance(plain, DatasetBatches)
    assert epoch(plain, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_users_loader_resumed_mid_epoch_yields_what_the_epoch_had_left() -> None:
    data = TensorDataset(torch.arange(10))
    g = torch.Generator().manual_seed(11)
    plain = LoaderBatches(DataLoader(data, batch_size=4))
    assert epoch(plain, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    shuffled = LoaderBatches(DataLoader(data, batch_size=4, shuffle=True, generator=g))
    whole = epoch(shuffled, 0)
    assert sorted(flat(whole)) == list(range(10)) and flat(whole) != list(range(10))
    assert len(LoaderBatches(DataLoader(data, batch_size=4), limit=2)) == 2
    # a fresh loader whose generator has moved on: the saved state replays the same order
    resumed = LoaderBatches(
        DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5))
    )
    resumed.replay = shuffled.order_state
    assert epoch(resumed, 0, start=1) == whole[1:]
