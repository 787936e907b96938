"""Overfit one batch: a model that cannot drive the loss of a single batch near the lowest its
objective allows (0, or the smoothed target's entropy under label smoothing) has a bug (a cut
graph, targets that do not match the outputs, a wrong loss), not a tuning problem; one whose
loss rises or turns non-finite steps too far (the learning rate)."""

from __future__ import annotations

import math
from typing import Any

from mlenv.doctor.loss_checks import expected_initial_loss, loss_floor
from mlenv.doctor.verdict import Verdict

# "near the floor": within this share of the way from the floor to the initial (or chance-level)
# loss; the floor is 0 unless label smoothing keeps the loss above it
NEAR_ZERO = 0.1


def overfit_batch(probe: Any, steps: int = 500, lr: float | None = None) -> dict[str, Any]:
    """Train the probe's model on its one batch with the run's optimizer for up to ``steps``
    steps, stopping once the loss is near its floor. Returns the losses, the floor and the
    target."""
    trainer = probe.trainer
    optimizer = probe.optimizer(lr if lr is not None else trainer.config.lr)
    losses: list[float] = []
    target = None
    floor = loss_floor(probe)
    for _ in range(steps):
        total, _, _ = probe.loss()
        loss = float(total.detach())
        losses.append(loss)
        if target is None:
            chance = expected_initial_loss(trainer.task, probe)
            start = min(loss, chance[0] if chance else loss)
            target = floor + NEAR_ZERO * (start - floor)
        if not math.isfinite(loss) or loss <= target:
            break
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    return {"losses": losses, "floor": floor, "target": target, "lr": lr}


def check_overfit_batch(probe: Any, steps: int = 500, lr: float | None = None) -> Verdict:
    """ok when the loss of one batch falls within ``NEAR_ZERO`` of the way from its floor to
    where it started within ``steps`` steps; fail otherwise, telling a loss that rose (the learning rate) from one that
    stalled (a bug)."""
    from mlenv.doctor.gradients import DEAD_WARN, gradient_flow

    dead_before = gradient_flow(probe)["dead"]
    result = overfit_batch(probe, steps, lr)
    losses, target, floor = result["losses"], result["target"], result["floor"]
    first, last = losses[0], losses[-1]
    figures = {
        "steps": len(losses),
        "first_loss": first,
        "last_loss": last,
        "target": target,
        "floor": floor,
        "lr": result["lr"],
    }
    n = probe.trainer.batch_size_of(probe.batch)
    near = f"the label-smoothed floor {floor:.3g}" if floor > 0 else "0"
    evidence = (
        f"one batch of {n}, lr {result['lr']:.3g}: loss {first:.4g} -> {last:.4g} in "
        f"{len(losses) - 1} steps (near {near} means below {target:.3g})"
    )
    if math.isfinite(last) and last <= target:
        return Verdict("overfit one batch", "ok", evidence, figures=figures)
    if not math.isfinite(last) or last > first or max(losses) > 4 * first:
        if not math.isfinite(last):
            what = "; the loss went non-finite"
        elif last > first:
            what = "; the loss rose"
        else:
            what = f"; the loss jumped to {max(losses):.4g} on the way"
        return Verdict(
            "overfit one batch",
            "fail",
            evidence + what,
            "the steps overshoot: lower the learning rate (`mlenv lr-find` suggests one)",
            figures,
        )
    dead = gradient_flow(probe)["dead"]  # did the steps kill the ReLUs?
    killed = {n: f for n, f in dead.items() if f > DEAD_WARN and f > dead_before[n] + 0.25}
    if killed:
        layer = max(killed, key=killed.get)
        return Verdict(
            "overfit one batch",
            "fail",
            evidence + f"; it stalled, the steps left {dead[layer]:.0%} of the ReLU units of "
            f"{layer} dead ({dead_before[layer]:.0%} before)",
            "the steps were too large and killed the ReLUs: lower the learning rate "
            "(`mlenv lr-find` suggests one)",
            figures,
        )
    return Verdict(
        "overfit one batch",
        "fail",
        evidence + f"; it did not get near {near}",
        "a bug, not a tuning problem: check that gradients reach every layer (gradient flow), "
        "that the inputs differ between examples (the scaling check), that targets match the "
        "outputs (shape, dtype, label order) and that the loss is the one the outputs need",
        figures,
    )
