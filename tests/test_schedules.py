"""Every schedule against torch's own scheduler (or a closed form) at many steps, warmup included."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as S

from mlenv.config import TrainConfig
from mlenv.errors import ConfigError
from mlenv.train.schedules import LRSchedule, plot_schedule

LR, EPOCHS, STEPS = 0.1, 6, 10  # 60 optimizer steps


def ours(**overrides) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    schedule = LRSchedule(opt, TrainConfig(lr=LR, epochs=EPOCHS, **overrides), STEPS)
    rates = []
    for _ in range(EPOCHS * STEPS):
        rates.append(opt.param_groups[0]["lr"])
        schedule.step()
    return rates


def torch_rates(make, per: str = "step") -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    sched = make(opt)
    rates = []
    for step in range(EPOCHS * STEPS):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        if per == "step" or (step + 1) % STEPS == 0:
            sched.step()
    return rates


def close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), (i, x, y)


def test_cosine_matches_torch():
    close(
        ours(scheduler="cosine", min_lr=0.001),
        torch_rates(lambda o: S.CosineAnnealingLR(o, T_max=60, eta_min=0.001)),
    )


def test_step_matches_torch_stepped_per_epoch():
    close(
        ours(scheduler="step", step_size=2, gamma=0.5),
        torch_rates(lambda o: S.StepLR(o, step_size=2, gamma=0.5), per="epoch"),
    )


def test_exponential_matches_torch_stepped_per_epoch():
    close(
        ours(scheduler="exponential", gamma=0.8),
        torch_rates(lambda o: S.ExponentialLR(o, gamma=0.8), per="epoch"),
    )


def test_linear_decay_matches_torch():
    close(
        ours(scheduler="linear"),
        torch_rates(lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=60)),
    )


def test_onecycle_matches_torch():
    close(
        ours(scheduler="onecycle"),
        torch_rates(lambda o: S.OneCycleLR(o, max_lr=LR, total_steps=60, cycle_momentum=False)),
    )


def test_constant_with_warmup_steps_matches_linear_lr():
    close(
        ours(scheduler="constant", warmup_steps=15, warmup_start_factor=0.2),
        torch_rates(lambda o: S.LinearLR(o, start_factor=0.2, end_factor=1.0, total_iters=15)),
    )


def test_cosine_after_warmup_epochs_matches_sequential_lr():
    def make(o):
        warm = S.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=20)
        cos = S.CosineAnnealingLR(o, T_max=40)
        return S.SequentialLR(o, [warm, cos], milestones=[20])

    close(ours(scheduler="cosine", warmup_epochs=2, warmup_start_factor=0.1), torch_rates(make))


def test_plateau_matches_torch():
    metrics = [1.0, 0.9, 0.9, 0.91, 0.95, 0.8, 0.85, 0.86, 0.87, 0.9]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    mine = LRSchedule(
        opt, TrainConfig(lr=LR, scheduler="plateau", plateau_patience=2, gamma=0.5), 10
    )
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    ref = S.ReduceLROnPlateau(ref_opt, mode="min", factor=0.5, patience=2)
    for value in metrics:
        mine.epoch_end(value)
        ref.step(value)
        assert math.isclose(opt.param_groups[0]["lr"], ref_opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] < LR  # it did reduce


def test_state_dict_round_trip_gives_the_same_rates():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    cfg = TrainConfig(lr=LR, epochs=EPOCHS, scheduler="cosine", warmup_steps=5)
    a = LRSchedule(opt, cfg, STEPS)
    for _ in range(17):
        a.step()
    opt2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    b = LRSchedule(opt2, cfg, STEPS)
    b.load_state_dict(a.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_warmup_errors():
    with pytest.raises(ConfigError, match="give one of them, not both"):
        TrainConfig(warmup_epochs=1, warmup_steps=3)
    with pytest.raises(ConfigError, match="onecycle has its own warmup"):
        ours(scheduler="onecycle", warmup_steps=3)
    with pytest.raises(ConfigError, match="leave no training steps"):
        ours(warmup_epochs=EPOCHS)


def test_plot_schedule_draws_the_curve(tmp_path):
    rates = plot_schedule(
        TrainConfig(lr=LR, epochs=EPOCHS, scheduler="cosine", warmup_steps=6),
        STEPS,
        tmp_path / "lr.png",
    )
    assert len(rates) == 60 and rates[6] == pytest.approx(LR)
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"


def test_cosine_with_warmup_and_min_lr_at_hand_computed_steps():
    # 6 steps: 2 of warm-up from 0.1 x lr (min_lr plays no part there), then a cosine over the 4
    # steps left from lr down to min_lr; the rates read from the optimizer as each step trains
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    config = TrainConfig(lr=0.1, epochs=1, scheduler="cosine", warmup_steps=2, min_lr=0.01)
    schedule = LRSchedule(opt, config, 6)
    rates = []
    for _ in range(7):
        rates.append(opt.param_groups[0]["lr"])
        schedule.step()
    c = math.cos(math.pi / 4)
    expected = [0.01, 0.055, 0.1, 0.01 + 0.045 * (1 + c), 0.055, 0.01 + 0.045 * (1 - c), 0.01]
    assert rates == pytest.approx(expected, rel=1e-12)


def test_step_schedule_at_hand_computed_epochs():
    # 10 steps an epoch, step_size 2, gamma 0.5: epochs 1-2 at lr, 3-4 at lr/2, 5-6 at lr/4
    rates = ours(scheduler="step", step_size=2, gamma=0.5)
    assert rates[0] == rates[19] == pytest.approx(LR)
    assert rates[20] == rates[39] == pytest.approx(LR / 2)
    assert rates[40] == rates[59] == pytest.approx(LR / 4)


def test_plateau_in_max_mode_matches_torch():
    metrics = [0.5, 0.6, 0.6, 0.6, 0.7, 0.69, 0.7, 0.7, 0.71, 0.65]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    config = TrainConfig(
        lr=LR, scheduler="plateau", plateau_patience=1, gamma=0.5, monitor="val_acc"
    )
    mine = LRSchedule(opt, config, 10)
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    ref = S.ReduceLROnPlateau(ref_opt, mode="max", factor=0.5, patience=1)
    for value in metrics:
        mine.epoch_end(value)
        ref.step(value)
        assert math.isclose(opt.param_groups[0]["lr"], ref_opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(LR / 4)  # it reduced twice


def test_plateau_threshold_is_relative_to_the_size_of_a_negative_best():
    # a negative loss (a log-density) must fall by 1e-4 of |best| to count: -1.0002 beats -1,
    # -1.00025 and -1.00029 do not beat -1.0002 (torch's rule, best * (1 - 1e-4), would call
    # each of them a gain, and -0.99995 too)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    schedule = LRSchedule(
        opt, TrainConfig(lr=LR, scheduler="plateau", plateau_patience=1, gamma=0.5), 10
    )
    for value in (-1.0, -1.0002, -1.00025):
        schedule.epoch_end(value)
    assert opt.param_groups[0]["lr"] == pytest.approx(LR)
    schedule.epoch_end(-1.00029)  # the second epoch without a gain: reduced
    assert opt.param_groups[0]["lr"] == pytest.approx(LR / 2)
    assert schedule.plateau_best == -1.0002


def test_plateau_state_round_trips_with_its_reductions():
    def schedule():
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
        config = TrainConfig(lr=LR, scheduler="plateau", plateau_patience=1, gamma=0.5)
        return opt, LRSchedule(opt, config, 10)

    opt_a, a = schedule()
    for value in (1.0, 1.0, 1.0, 0.9, 0.95):  # one reduction, then one bad epoch
        a.epoch_end(value)
    opt_b, b = schedule()
    b.load_state_dict(a.state_dict())
    assert opt_b.param_groups[0]["lr"] == pytest.approx(LR / 2)
    for value in (0.96, 0.97):  # the second bad epoch in a row reduces again, for both
        a.epoch_end(value)
        b.epoch_end(value)
        assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    assert opt_b.param_groups[0]["lr"] == pytest.approx(LR / 4)


def test_default_gammas():
    # step: x0.1 every step_size epochs; exponential: x0.95 an epoch (10 steps an epoch)
    step = ours(scheduler="step", step_size=1)
    assert step[9] == pytest.approx(LR) and step[10] == pytest.approx(LR * 0.1)
    exponential = ours(scheduler="exponential")
    assert exponential[20] == pytest.approx(LR * 0.95**2)
