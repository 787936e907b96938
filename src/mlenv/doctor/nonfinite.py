"""Non-finite values in one forward and backward pass: the loss term that is NaN or infinite,
the first module whose output is (``mlenv.train.nonfinite``, which training uses too), and the
first parameter whose gradient is."""

from __future__ import annotations

import math
from typing import Any

import torch

from mlenv.doctor.verdict import Verdict


def check_nonfinite(probe: Any) -> Verdict:
    """fail when a loss term, a module output or a gradient of the probe's batch is NaN or
    infinite, naming the first; ok otherwise."""
    from mlenv.train.nonfinite import first_nonfinite_layer

    model = probe.model
    model.zero_grad(set_to_none=True)
    total, terms, _ = probe.loss()
    values = {name: float(t.detach()) for name, t in terms.items()}
    values = values or {"loss": float(total.detach())}
    bad = [name for name, v in values.items() if not math.isfinite(v)]
    if bad or not math.isfinite(float(total.detach())):
        bad = bad or ["loss"]
        layer = first_nonfinite_layer(model, probe.loss)
        return Verdict(
            "non-finite values",
            "fail",
            f"loss term {', '.join(map(repr, bad))} = {values.get(bad[0], float(total.detach()))}; "
            f"first non-finite output: {layer}",
            "look at that module's inputs and operations (log or sqrt of values <= 0, division "
            "by 0, exp overflow; under fp16, values beyond 65504)",
            {"terms": bad, "layer": layer},
        )
    total.backward()
    for name, param in model.named_parameters():
        if param.grad is not None and not torch.isfinite(param.grad).all():
            model.zero_grad(set_to_none=True)
            return Verdict(
                "non-finite values",
                "fail",
                f"the loss is finite ({float(total.detach()):.4g}) but the gradient of {name} is not",
                "an operation with an infinite derivative at its input (sqrt at 0, log at 0); "
                "add an epsilon",
                {"parameter": name},
            )
    model.zero_grad(set_to_none=True)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
    return Verdict("non-finite values", "ok", f"loss terms, outputs and gradients finite ({shown})")
