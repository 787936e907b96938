"""Gradient flow per layer after one backward pass: the gradient norm of every parameter, the
parameters no gradient reaches (a detached tensor or an unused layer), ReLUs that are dead for
the whole batch, and gradients that vanish or explode; with a plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlenv.doctor.verdict import Verdict

DEAD_WARN = 0.5  # share of a ReLU's units that are 0 for every example of the batch
VANISHING = 1e-5  # a parameter's gradient norm below this share of the largest one
EXPLODING = 1e3  # total gradient norm above this


def gradient_flow(probe: Any) -> dict[str, Any]:
    """One forward and backward pass of the probe's batch: ``grads`` (parameter name -> gradient
    norm, None when no gradient reached it), ``weights`` (name -> parameter norm), ``dead``
    (ReLU module name -> share of units that are 0 for the whole batch) and ``total``."""
    model = probe.model
    dead: dict[str, float] = {}
    handles = []

    def hook(name: str):
        def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            units = output.detach().reshape(output.shape[0], -1)  # (B, units)
            dead[name] = float((units.abs().amax(dim=0) == 0).float().mean())

        return record

    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU | nn.ReLU6):
            handles.append(module.register_forward_hook(hook(name)))
    model.zero_grad(set_to_none=True)
    try:
        total, _, _ = probe.loss()
        total.backward()
    finally:
        for handle in handles:
            handle.remove()
    grads: dict[str, float | None] = {}
    weights: dict[str, float] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        weights[name] = float(param.detach().norm())
        grads[name] = None if param.grad is None else float(param.grad.detach().norm())
    known = [g for g in grads.values() if g is not None]
    total_norm = math.sqrt(sum(g * g for g in known)) if known else 0.0
    model.zero_grad(set_to_none=True)
    return {"grads": grads, "weights": weights, "dead": dead, "total": total_norm}


def check_gradient_flow(probe: Any, plot: str | Path | None = None) -> Verdict:
    """fail: a parameter gets no gradient (or an all-zero one), or the gradients explode or are
    not finite; warn: a ReLU layer mostly dead, or a gradient that vanishes next to the
    largest; ok otherwise. ``plot``: where to draw the norms."""
    flow = gradient_flow(probe)
    grads, dead, total = flow["grads"], flow["dead"], flow["total"]
    figures = {"grad_norms": grads, "dead_relu": dead, "total_norm": total}
    drawn = plot_gradient_flow(flow, plot) if plot is not None else None
    none = [n for n, g in grads.items() if g is None or g == 0]
    problems: list[tuple[str, str, str]] = []  # (status, evidence, fix)
    if none:
        problems.append(
            (
                "fail",
                f"no gradient reaches {', '.join(none[:6])}{', ...' if len(none) > 6 else ''}",
                "something cuts the graph before these layers (.detach(), .data, torch.no_grad, "
                "a non-differentiable step such as argmax or round) or they are unused",
            )
        )
    if not math.isfinite(total) or total > EXPLODING:
        problems.append(
            (
                "fail",
                f"exploding gradients: total norm {total:.3g}",
                "lower the learning rate, clip gradients (--grad-clip 1.0), check the init",
            )
        )
    largest = max((g for g in grads.values() if g), default=0.0)
    vanishing = [n for n, g in grads.items() if g and g < VANISHING * largest]
    if vanishing:
        problems.append(
            (
                "warn",
                f"vanishing gradients in {', '.join(vanishing[:6])} (below {VANISHING:g} of the "
                "largest)",
                "normalisation layers, residual connections, ReLU-family activations, a "
                "fan-in-scaled init",
            )
        )
    mostly_dead = {n: f for n, f in dead.items() if f > DEAD_WARN}
    if mostly_dead:
        shown = ", ".join(f"{n} {f:.0%}" for n, f in mostly_dead.items())
        problems.append(
            (
                "warn",
                f"dead ReLUs (0 for the whole batch): {shown}",
                "a smaller learning rate, LeakyReLU/GELU, or check the input scaling",
            )
        )
    summary = f"total gradient norm {total:.3g} over {len(grads)} parameters"
    if dead:
        summary += f"; dead ReLU units at most {max(dead.values()):.0%}"
    if not problems:
        return Verdict("gradient flow", "ok", summary, figures=figures, plot=drawn)
    status = "fail" if any(p[0] == "fail" for p in problems) else "warn"
    return Verdict(
        "gradient flow",
        status,
        "; ".join(p[1] for p in problems) + f" ({summary})",
        "; ".join(p[2] for p in problems),
        figures,
        drawn,
    )


def plot_gradient_flow(flow: dict[str, Any], path: str | Path) -> Path:
    """Gradient norm of every parameter (log scale; no gradient drawn in red at the bottom) and
    the dead share of every ReLU layer."""
    from mlenv.track.plots import _pyplot, save_figure

    plt = _pyplot()
    grads = flow["grads"]
    names = list(grads)
    known = [g for g in grads.values() if g]
    floor = min(known) / 10 if known else 1e-12
    values = [g if g else floor for g in grads.values()]
    colors = ["tab:red" if not g else "tab:blue" for g in grads.values()]
    rows = 2 if flow["dead"] else 1
    fig, axes = plt.subplots(rows, 1, figsize=(7.0, 0.28 * len(names) + 2.5 + 1.5 * (rows - 1)))
    axes = axes if rows > 1 else [axes]
    axes[0].barh(range(len(names)), values, color=colors)
    axes[0].set_yticks(range(len(names)), names, fontsize=7)
    axes[0].invert_yaxis()
    axes[0].set_xscale("log")
    axes[0].set(xlabel="gradient norm (red: no gradient)", title="gradient flow, one batch")
    if rows > 1:
        dead = flow["dead"]
        axes[1].bar(range(len(dead)), list(dead.values()), color="tab:gray")
        axes[1].set_xticks(range(len(dead)), list(dead), fontsize=7)
        axes[1].set(ylabel="dead share", ylim=(0, 1), title="ReLU units 0 for the whole batch")
    fig.tight_layout()
    return save_figure(fig, path)
