"""Seeding and determinism, RNG state capture for checkpoints, the thread choice and the FLOP
estimate it is based on."""

from __future__ import annotations

import io
import random

import numpy as np
import torch
from torch import nn

from mlenv.models import create_model
from mlenv.runtime import threads
from mlenv.runtime.seed import capture_rng_state, restore_rng_state, seed_everything


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.random()), float(torch.rand(()))


def test_same_seed_same_draws_and_weights_different_seeds_differ():
    seed_everything(3)
    first, w_first = draws(), create_model("mlp", in_features=4, hidden=[3]).net[0].weight
    seed_everything(3)
    again, w_again = draws(), create_model("mlp", in_features=4, hidden=[3]).net[0].weight
    seed_everything(4)
    other, w_other = draws(), create_model("mlp", in_features=4, hidden=[3]).net[0].weight
    assert first == again and torch.equal(w_first, w_again)
    assert all(a != b for a, b in zip(first, other, strict=True))  # python, numpy and torch
    assert not torch.equal(w_first, w_other)


def test_create_model_seed_alone_sets_the_weights_and_leaves_the_global_rng():
    torch.manual_seed(11)
    expected_next = torch.rand(3)
    torch.manual_seed(11)
    a = create_model("mlp", seed=0, in_features=4, hidden=[3])
    assert torch.equal(torch.rand(3), expected_next)  # the global stream did not move
    b = create_model("mlp", seed=0, in_features=4, hidden=[3])
    c = create_model("mlp", seed=1, in_features=4, hidden=[3])
    assert torch.equal(a.net[0].weight, b.net[0].weight)
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


def test_deterministic_mode_is_switched_on_and_back_off():
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_captured_rng_state_survives_a_weights_only_load_and_continues_every_stream():
    seed_everything(5)
    random.gauss(0, 1)  # python keeps the second value of a Box-Muller pair
    np.random.standard_normal()  # so does numpy's legacy generator (has_gauss = 1)
    buffer = io.BytesIO()
    torch.save(capture_rng_state(), buffer)
    expected = (random.gauss(0, 1), float(np.random.standard_normal()), *draws())
    seed_everything(99)  # move every stream elsewhere
    buffer.seek(0)
    restore_rng_state(torch.load(buffer, weights_only=True))
    got = (random.gauss(0, 1), float(np.random.standard_normal()), *draws())
    assert got == expected


def test_thread_choice_one_for_small_steps_else_the_free_cores(monkeypatch):
    assert threads.choose_threads(1e5) == 1
    assert threads.choose_threads(threads.SINGLE_THREAD_MAX_FLOPS / 2) == 1
    assert threads.choose_threads(1e5, requested=3) == 3  # a requested count always wins
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert threads.choose_threads(1e9) == 3  # 4 cores, about 1 busy
    assert threads.choose_threads(None) == 3  # no estimate: as a big step
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (7.0, 0.0, 0.0))
    assert threads.choose_threads(1e9) == 1  # never below one


def test_flop_estimate_of_linear_grouped_conv_and_lstm_layers_and_mode_is_kept():
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    model.train()
    # 2 * in * out per sample and layer, batch of 4
    assert threads.estimate_flops(model, torch.zeros(4, 5)) == 4 * 2 * (5 * 7 + 7 * 3)
    assert model.training  # the estimate runs in eval mode and gives the mode back
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    # each output value sees in/groups = 2 channels of 3x3: 2 * 18 FLOPs; 6 x 5 x 5 outputs
    assert threads.estimate_flops(conv, torch.zeros(1, 4, 5, 5)) == 2 * 2 * 9 * 6 * 5 * 5
    lstm = nn.LSTM(3, 5, batch_first=True)
    # 4 gates, (input + hidden) x hidden weights each, per step: 7 steps, batch 2
    assert threads.estimate_flops(lstm, torch.zeros(2, 7, 3)) == 2 * 4 * (3 + 5) * 5 * 14
    assert threads.estimate_flops(model, torch.zeros(4, 6)) is None  # a batch it cannot run
