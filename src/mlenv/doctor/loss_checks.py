"""The BCE edge cases that tell two implementations apart, through every output mode.

PyTorch's BCE clamps each log term at -100, so a certain and correct prediction costs 0, a certain
and wrong one costs 100, and 0.5 costs ln 2 = 0.693147, never NaN or inf. A port that takes
log(0) gets inf or NaN and its training is lost; this table shows both.

``check_initial_loss`` (the doctor) compares an untrained model's loss with chance level.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from mlenv.doctor.verdict import Verdict

TARGETS = [1.0, 0.0, 1.0, 0.0]
CASES = [  # (name, predicted probabilities, expected mean loss)
    ("perfect", [1.0, 0.0, 1.0, 0.0], 0.0),
    ("wrong", [0.0, 1.0, 0.0, 1.0], 100.0),
    ("uncertain", [0.5, 0.5, 0.5, 0.5], math.log(2)),
]
# A probability of exactly 0 or 1 is a logit of -inf or +inf; the clamp at -100 corresponds to a
# logit of +-100 (BCEWithLogits(-100, 1) = 100 + log1p(e^-100) = 100.0).
CLAMP_LOGIT = 100.0


def _as_logit(p: torch.Tensor) -> torch.Tensor:
    return torch.logit(p).clamp(-CLAMP_LOGIT, CLAMP_LOGIT)


def loss_and_grad(mode: str, probabilities: list[float]) -> tuple[float, list[float]]:
    """Mean loss over the batch and the gradient with respect to the model's output."""
    p = torch.tensor(probabilities, dtype=torch.float32)
    y = torch.tensor(TARGETS)
    if mode == "sigmoid":  # the model outputs probabilities; BCE clamps log at -100
        out = p.clone().requires_grad_()
        loss = F.binary_cross_entropy(out, y)
    elif mode == "logits":
        out = _as_logit(p).requires_grad_()
        loss = F.binary_cross_entropy_with_logits(out, y)
    elif mode == "two-class":  # logits (0, z) for class 0 and 1; softmax gives sigmoid(z)
        out = torch.stack([torch.zeros(4), _as_logit(p)], dim=1).requires_grad_()
        loss = F.cross_entropy(out, y.long())
    elif mode == "unclamped":  # what a port that takes log(0) computes
        out = p.clone().requires_grad_()
        loss = -(y * torch.log(out) + (1 - y) * torch.log(1 - out)).mean()
    else:
        raise ValueError(mode)
    loss.backward()
    grad = out.grad if mode != "two-class" else out.grad[:, 1]
    return loss.item(), [float(g) for g in grad]


def loss_table() -> list[dict]:
    rows = []
    for mode in ("sigmoid", "logits", "two-class", "unclamped"):
        for name, probabilities, expected in CASES:
            loss, grad = loss_and_grad(mode, probabilities)
            rows.append(
                {
                    "mode": mode,
                    "case": name,
                    "expected": expected,
                    "loss": loss,
                    "grad": grad,
                    "ok": math.isfinite(loss)
                    and all(math.isfinite(g) for g in grad)
                    and abs(loss - expected) < 1e-5,
                }
            )
    return rows


def format_loss_table(rows: list[dict]) -> str:
    lines = [
        f"targets {TARGETS}",
        "",
        f"{'mode':10s} {'case':10s} {'expected':>10s} {'loss':>10s}  gradient w.r.t. output",
    ]
    for r in rows:
        grad = ", ".join(f"{g:.6g}" for g in r["grad"])
        flag = "" if r["ok"] else "   <-- not finite or not expected"
        note = "  (reference: no clamp)" if r["mode"] == "unclamped" else ""
        lines.append(
            f"{r['mode']:10s} {r['case']:10s} {r['expected']:10.6f} {r['loss']:10.6f}  "
            f"[{grad}]{flag}{note}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Doctor: the loss of the untrained model against what chance gives.

INITIAL_OK = 1.25  # initial loss / expected up to this: ok; up to INITIAL_FAIL: warn; above: fail
INITIAL_FAIL = 2.0
INITIAL_LOW = 0.5  # below this share of the expected loss before any training: suspicious


def class_count(task: Any, probe: Any) -> int | None:
    """The number of classes the loss chooses among: 2 for a binary task, the width of the
    logits (the last dimension: C of (B, C), V of a language model's (B, T, V)) for a
    classification or language-model task, else None."""
    from mlenv.train.tasks import BinaryTask, ClassificationTask, LanguageModelTask

    if isinstance(task, BinaryTask):
        return 2
    if isinstance(task, ClassificationTask | LanguageModelTask):
        return int(probe.outputs().shape[-1])
    return None


def expected_initial_loss(task: Any, probe: Any) -> tuple[float, str] | None:
    """What the loss is when the model predicts every class with equal probability: ln 2 for
    a binary task, ln C for C classes (the width of the model's logits), else None."""
    from mlenv.train.tasks import BinaryTask

    c = class_count(task, probe)
    if c is None:
        return None
    return math.log(c), "ln 2 (binary)" if isinstance(task, BinaryTask) else f"ln {c} ({c} classes)"


def smoothed_target_entropy(eps: float, classes: int) -> float:
    """The lowest cross-entropy label smoothing ``eps`` allows over ``classes`` classes: the
    entropy of its target ``(1 - eps) * onehot + eps / K``,
    ``-(1 - eps + eps/K) ln(1 - eps + eps/K) - (K - 1) (eps/K) ln(eps/K)`` (0 without
    smoothing; 0.719 for eps 0.1 over 58 characters)."""
    if eps <= 0:
        return 0.0
    top, rest = 1 - eps + eps / classes, eps / classes
    return -top * math.log(top) - (classes - 1) * rest * math.log(rest)


def loss_floor(probe: Any) -> float:
    """The lowest loss the probe's objective can reach on a batch: the smoothed target's
    entropy for a cross-entropy with label smoothing, else 0."""
    eps = float(getattr(probe.trainer.criterion, "label_smoothing", 0.0) or 0.0)
    classes = class_count(probe.trainer.task, probe) if eps > 0 else None
    return smoothed_target_entropy(eps, classes) if classes else 0.0


def check_initial_loss(probe: Any) -> Verdict:
    """The untrained model's loss on one batch against ``expected_initial_loss``: a loss far
    above it means confident wrong predictions from the start (a last layer initialised large,
    logits fed where probabilities are expected), far below it that the answer leaks in."""
    model = probe.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            total, _, _ = probe.loss()
    finally:
        model.train(was_training)
    loss = float(total)
    expected = expected_initial_loss(probe.trainer.task, probe)
    if expected is None:
        return Verdict(
            "initial loss",
            "skip",
            f"{loss:.4g} (no chance level known for {type(probe.trainer.task).__name__})",
            figures={"loss": loss},
        )
    value, what = expected
    ratio = loss / value
    figures = {"loss": loss, "expected": value, "ratio": ratio}
    evidence = f"{loss:.4g} on one batch before training; chance gives {what} = {value:.4g}"
    if not math.isfinite(loss) or ratio > INITIAL_FAIL:
        status = "fail"
    elif ratio > INITIAL_OK or ratio < INITIAL_LOW:
        status = "warn"
    else:
        status = "ok"
    if ratio < INITIAL_LOW:
        fix = "a loss below chance before training: check that no target leaks into the inputs"
    else:
        fix = (
            "the untrained model is confidently wrong: initialise the last layer small (e.g. "
            "zero weights, the bias at the log of the class frequencies), and check that the "
            "loss gets logits where it expects logits"
        )
    return Verdict("initial loss", status, evidence, fix, figures)
