"""Gradient clipping and mixed precision do what they claim, through the Trainer's own loop.

Each test trains one optimizer step with ``fit`` and watches from the outside: the gradients as
backward leaves them (a post-accumulate hook on every parameter) and as the optimizer receives them
(a global optimizer step pre-hook), so nothing here calls torch's clipping or the loop's parts.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from mlenv import TrainConfig, Trainer


class Regression(Trainer):
    def get_criterion(self):
        return nn.MSELoss()

    def forward_pass(self, batch):
        x, y = batch
        out = self.model(x)
        return self.criterion(out, y), out


def make_data(rows: int = 64, scale: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 4, generator=generator)
    y = scale * torch.randn(rows, 1, generator=generator)  # large targets: large gradients
    return x, y


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def one_step(
    target_scale: float = 100.0, **config
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Train one optimizer step (one batch, one epoch); the gradients after backward and as the
    optimizer saw them, parameter by parameter."""
    model = make_model()
    after_backward: list[torch.Tensor] = []
    at_step: list[torch.Tensor] = []
    handles = [
        p.register_post_accumulate_grad_hook(lambda p: after_backward.append(p.grad.clone()))
        for p in model.parameters()
    ]

    def before_step(optimizer, _args, _kwargs):
        for group in optimizer.param_groups:
            at_step.extend(p.grad.clone() for p in group["params"] if p.grad is not None)

    handles.append(register_optimizer_step_pre_hook(before_step))
    x, y = make_data(scale=target_scale)
    options = {"epochs": 1, "batch_size": len(x), "progress": False, "threads": 1, **config}
    try:
        Regression(TrainConfig(**options), model=model).fit((x, y))
    finally:
        for handle in handles:
            handle.remove()
    # backward fills parameters in reverse order; the optimizer lists them in model order
    assert len(after_backward) == len(at_step) == 4
    by_shape = {tuple(g.shape): g for g in after_backward}
    return [by_shape[tuple(g.shape)] for g in at_step], at_step


def total_norm(grads: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


def test_clip_by_norm_scales_the_total_norm_to_the_threshold():
    before, after = one_step(grad_clip=0.1, grad_clip_mode="norm")
    assert total_norm(before) > 10.0  # far above the threshold: clipping is active
    assert total_norm(after) == pytest.approx(0.1, abs=1e-6)
    # the direction is kept: every gradient is scaled by the same factor
    factor = 0.1 / total_norm(before)
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b * factor, rtol=1e-5, atol=1e-9)


def test_clip_by_norm_under_fp16_clips_the_unscaled_gradients():
    # the grad scaler multiplies the loss by 65536; clipping must see the true gradients. SGD,
    # because a fused Adam takes the scaled gradients and unscales them inside its kernel (the
    # pre-hook would not see what the step uses)
    before, after = one_step(
        target_scale=0.1,
        grad_clip=0.01,
        grad_clip_mode="norm",
        precision="16",
        device="cpu",
        optimizer="sgd",
    )
    assert total_norm(before) > 1000 * 0.01  # scaled gradients, as backward leaves them
    assert total_norm(after) == pytest.approx(0.01, abs=1e-6)


def test_clip_by_norm_leaves_small_gradients_untouched():
    before, after = one_step(grad_clip=1e6, grad_clip_mode="norm")
    assert total_norm(before) < 1e6
    for b, a in zip(before, after, strict=True):
        assert torch.equal(a, b)


def test_clip_by_value_bounds_every_gradient_and_reaches_the_bound():
    c = 0.5
    before, after = one_step(grad_clip=c, grad_clip_mode="value")
    bound = torch.tensor(c, dtype=torch.float32)
    assert max(float(b.abs().max()) for b in before) > 10 * c  # clipping is active
    at_bound = 0
    for b, a in zip(before, after, strict=True):
        assert (a.abs() <= bound).all()
        at_bound += int((a.abs() == bound).sum())
        inside = b.abs() <= bound
        assert torch.equal(a[inside], b[inside])  # gradients within the bound are untouched
        assert torch.equal(a[~inside], bound * b[~inside].sign())  # the rest sit at +-c
    assert at_bound > 0


def test_no_clipping_without_grad_clip():
    before, after = one_step(grad_clip=None)
    for b, a in zip(before, after, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("32", torch.float32)])
def test_precision_sets_the_dtype_of_activations_inside_forward_pass(precision, dtype):
    model = make_model()
    seen: list[torch.dtype] = []
    handle = model[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))

    class Watched(Regression):
        def forward_pass(self, batch):
            seen.clear()
            loss, out = super().forward_pass(batch)
            self.dtypes = list(seen)  # what the Linear produced inside this forward_pass
            return loss, out

    x, y = make_data()
    config = TrainConfig(
        epochs=1, batch_size=len(x), precision=precision, device="cpu", progress=False, threads=1
    )
    trainer = Watched(config, model=model)
    try:
        trainer.fit((x, y))
    finally:
        handle.remove()
    assert trainer.dtypes == [dtype]


def test_an_fp16_overflow_is_named_by_the_nonfinite_diagnosis():
    from mlenv.errors import TrainingError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].weight.fill_(300.0)  # 4 * 300 * 100 = 120000 > 65504, the largest float16
    x, y = torch.full((16, 4), 100.0), torch.zeros(16, 1)
    config = TrainConfig(
        epochs=1, batch_size=16, precision="16", device="cpu", progress=False, threads=1
    )
    with pytest.raises(TrainingError, match=r"first non-finite output: 0 \(Linear\)"):
        Regression(config, model=model).fit((x, y))
