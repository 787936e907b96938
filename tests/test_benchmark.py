"""The benchmark's numbers that do not depend on the clock: throughput from the measured median,
a real training step per timed call (the optimizer steps), parameters and FLOPs by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlenv.bench import benchmark


def test_benchmark_rows_follow_from_the_measurements_and_train_for_real(monkeypatch):
    # exactly 1 warm-up and 3 timed calls per measurement, whatever the clock says
    monkeypatch.setattr(benchmark, "WARMUP", 1)
    monkeypatch.setattr(benchmark, "MIN_ITERS", 3)
    monkeypatch.setattr(benchmark, "MAX_ITERS", 3)
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(0.5)
        model.bias.fill_(0.25)
    before = [p.detach().clone() for p in model.parameters()]

    def make_batch(n):
        return (torch.ones(n, 4),)

    def loss_of(batch):
        return model(batch[0]).pow(2).mean()

    rows = benchmark.benchmark_model("lin", model, make_batch, loss_of, [1, 8], torch.device("cpu"))
    assert [r["batch_size"] for r in rows] == [1, 8]
    assert rows[0]["parameters"] == 4 * 3 + 3
    assert rows[0]["flops_per_sample"] == 2 * 4 * 3  # one multiply-add per weight
    for r in rows:
        # throughput is the batch over the median latency (p50), in samples per second
        seconds = r["latency_ms_p50"] / 1e3
        assert r["inference_samples_per_s"] == pytest.approx(r["batch_size"] / seconds, rel=1e-9)
        assert r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        assert r["threads"] == torch.get_num_threads() and r["device"] == "cpu"
    # every training call stepped Adam (lr 1e-4): all outputs stay positive, so each gradient
    # keeps its sign and each step moves every parameter by lr; 2 batch sizes x (1 + 3) steps
    for old, new in zip(before, model.parameters(), strict=True):
        assert (old - new.detach()).abs() == pytest.approx(torch.full_like(old, 8e-4), rel=1e-3)
    assert "15 parameters, 0.0 MFLOPs per sample" in benchmark.format_rows(rows)
