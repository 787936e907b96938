"""Each doctor verdict on a constructed case whose answer is known in closed form, on both sides
of its threshold: initial loss (a leak far below chance, ln V of a language model's (B, T, V)
logits), dead ReLUs counted per unit, vanishing/exploding/zero gradients, a non-finite gradient,
the overfit floor under label smoothing, uint8 images, the LR range test on a quadratic, the data
thresholds, run verdicts; and `mlenv doctor` / `mlenv lr-find` on recipes that set min_lr."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mlenv.cli import main
from mlenv.config import TrainConfig
from mlenv.doctor.command import run_verdicts
from mlenv.doctor.data_checks import check_imbalance, check_leakage, check_scaling
from mlenv.doctor.gradients import check_gradient_flow
from mlenv.doctor.loss_checks import check_initial_loss, smoothed_target_entropy
from mlenv.doctor.lr_find import check_learning_rate, lr_range_test
from mlenv.doctor.nonfinite import check_nonfinite
from mlenv.doctor.overfit import check_overfit_batch
from mlenv.doctor.probe import first_batch, make_probe
from mlenv.train.tasks import BinaryTask, ClassificationTask, LanguageModelTask, Task


def config(lr=1e-3, batch_size=32, **extra):
    return TrainConfig(
        lr=lr, batch_size=batch_size, threads=1, progress=False, device="cpu", **extra
    )


def probe_on(model, task, data, lr=1e-3, batch_size=32, **extra):
    return make_probe(
        model, task, config(lr, batch_size, **extra), first_batch(data, batch_size, 0)
    )


# -- initial loss -------------------------------------------------------------------------------


class LabelLogit(nn.Module):
    """Binary logits ``z * (2 * x[:, 0] - 1)`` where the input's first column is the label: the
    BCE is softplus(-z) on every example, so a chosen ``z`` gives any loss in closed form."""

    output = "logits"

    def __init__(self, z: float) -> None:
        super().__init__()
        self.z = nn.Parameter(torch.tensor(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z * (2 * x[:, 0] - 1)


# (initial loss / chance, verdict): each threshold (0.5, 1.25, 2) from both sides
INITIAL_CASES = [(0.01, "warn"), (0.45, "warn"), (0.55, "ok"), (1.2, "ok"), (1.3, "warn")]
INITIAL_CASES += [(1.9, "warn"), (2.1, "fail")]


@pytest.mark.parametrize(("ratio", "status"), INITIAL_CASES)
def test_initial_loss_verdict_on_both_sides_of_each_threshold(ratio, status):
    """softplus(-z) = ratio * ln 2 at z = -ln(2^ratio - 1): far below chance is a leak (warn
    below 0.5x), ok to 1.25x, warn to 2x, fail above."""
    y = torch.arange(64) % 2
    data = (y.float()[:, None], y.float())
    z = -math.log(2**ratio - 1)
    verdict = check_initial_loss(probe_on(LabelLogit(z), BinaryTask(), data))
    assert verdict.figures["ratio"] == pytest.approx(ratio, rel=1e-3)
    assert verdict.status == status, verdict.evidence
    if ratio < 0.5:
        assert "leaks" in verdict.fix
    elif status != "ok":
        assert "confidently wrong" in verdict.fix


class UniformLM(nn.Module):
    """A language model whose logits (B, T, V) are all 0: the loss is exactly ln V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, vocab)
        nn.init.zeros_(self.embed.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens)  # (B, T, V)


def test_initial_loss_of_a_language_model_counts_the_vocabulary_not_the_positions():
    """(B, T, V) = (4, 8, 50): chance is ln 50, not ln 8 (the time axis) or ln 4."""
    tokens = torch.randint(0, 50, (16, 9), generator=torch.Generator().manual_seed(0))
    data = (tokens[:, :-1], tokens[:, 1:])
    verdict = check_initial_loss(probe_on(UniformLM(50), LanguageModelTask(), data, batch_size=4))
    assert verdict.figures["expected"] == pytest.approx(math.log(50), abs=1e-12)
    assert verdict.figures["loss"] == pytest.approx(math.log(50), abs=1e-5)
    assert verdict.status == "ok" and "ln 50 (50 classes)" in verdict.evidence


# -- gradient flow ------------------------------------------------------------------------------


class TwoLayer(nn.Module):
    """10 -> 16 ReLU -> 1; ``dead`` of the 16 hidden units get a bias of -100 (always 0)."""

    output = "logits"

    def __init__(self, dead: int = 0, last_scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(10, 16)
        self.act = nn.ReLU()
        self.last = nn.Linear(16, 1)
        with torch.no_grad():
            self.first.bias[:dead] = -100.0
            self.first.bias[dead:] = 0.5  # the others positive for most examples
            self.last.weight.mul_(last_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.act(self.first(x))).squeeze(1)


@pytest.fixture(scope="module")
def gaussian():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 10, generator=g)
    return x, (x[:, 0] > 0).float()


@pytest.mark.parametrize(("dead", "status"), [(9, "warn"), (7, "ok")])
def test_dead_relus_are_counted_per_unit_over_the_batch(gaussian, dead, status):
    """9 of 16 units dead (0.5625 > 0.5): warn; 7 (0.4375): ok. No example has all 16 units at
    0, so a share counted per example would be 0."""
    verdict = check_gradient_flow(probe_on(TwoLayer(dead), BinaryTask(), gaussian))
    assert verdict.figures["dead_relu"] == {"act": pytest.approx(dead / 16)}
    assert verdict.status == status, verdict.evidence
    if status == "warn":
        assert "dead ReLUs (0 for the whole batch): act 56%" in verdict.evidence


@pytest.mark.parametrize(
    ("last_scale", "status", "words"),
    [
        (1e-7, "warn", "vanishing gradients in first.weight, first.bias"),
        (1e-3, "ok", "total gradient norm"),
        (1e5, "fail", "exploding gradients"),
        (1e2, "ok", "total gradient norm"),
    ],
)
def test_vanishing_and_exploding_gradients(gaussian, last_scale, status, words):
    """The first layer's gradient is proportional to the last layer's weight: scaled by 1e-7 it
    is below 1e-5 of the largest (warn), by 1e-3 above (ok); scaled by 1e5 the total norm passes
    1e3 (fail), by 1e2 not."""
    verdict = check_gradient_flow(probe_on(TwoLayer(0, last_scale), BinaryTask(), gaussian))
    grads = verdict.figures["grad_norms"]
    total = math.sqrt(sum(g * g for g in grads.values()))
    assert verdict.figures["total_norm"] == pytest.approx(total, rel=1e-9)
    ratio = grads["first.weight"] / max(grads.values())
    assert (ratio < 1e-5) == (status == "warn"), ratio
    assert (total > 1e3) == (status == "fail"), total
    assert verdict.status == status and words in verdict.evidence, verdict.evidence


class ZeroedBranch(nn.Module):
    """``unused`` is multiplied by 0: it gets a gradient, and the gradient is all zeros."""

    output = "logits"

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(10, 1)
        self.unused = nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.linear(x) + 0 * self.unused(x)).squeeze(1)


def test_an_all_zero_gradient_fails_like_no_gradient(gaussian):
    verdict = check_gradient_flow(probe_on(ZeroedBranch(), BinaryTask(), gaussian))
    assert verdict.status == "fail"
    assert "no gradient reaches unused.weight, unused.bias" in verdict.evidence


class SqrtAtZero(nn.Module):
    """A finite output whose gradient is infinite: d sqrt(s) / ds at s = 0."""

    output = "logits"

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(10, 1)
        self.s = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(1) + torch.sqrt(self.s)


def test_nonfinite_check_names_a_parameter_whose_gradient_is_infinite(gaussian):
    verdict = check_nonfinite(probe_on(SqrtAtZero(), BinaryTask(), gaussian))
    assert verdict.status == "fail"
    assert "is finite" in verdict.evidence and "the gradient of s is not" in verdict.evidence
    assert check_gradient_flow(probe_on(SqrtAtZero(), BinaryTask(), gaussian)).status == "fail"


# -- overfit one batch: the floor under label smoothing, uint8 images ---------------------------


def test_smoothed_target_entropy_in_closed_form():
    # -(1 - e + e/K) ln(1 - e + e/K) - (K - 1)(e/K) ln(e/K), e = 0.1
    assert smoothed_target_entropy(0.1, 58) == pytest.approx(0.7186124, abs=1e-6)
    assert smoothed_target_entropy(0.1, 10) == pytest.approx(
        -0.91 * math.log(0.91) - 9 * 0.01 * math.log(0.01), abs=1e-12
    )
    assert smoothed_target_entropy(0.0, 10) == 0.0


@pytest.fixture(scope="module")
def mnist_uint8(mnist_root):
    """256 MNIST training digits as uint8 (N, 1, 28, 28), the form the task scales on the
    device (as cifar10's and fashion-mnist's images)."""
    from mlenv.data.vision import load_mnist_uint8

    x, y = load_mnist_uint8(mnist_root, "train")
    return x[:256].unsqueeze(1).contiguous(), y[:256].clone()


def small_cnn():
    from mlenv.models.cnn import simple_cnn

    torch.manual_seed(0)
    return simple_cnn(widths=[8, 16], hidden=32, dropout=0.0, head_dropout=0.0)


def test_doctor_checks_on_uint8_images_with_label_smoothing(mnist_uint8):
    """cifar10-cnn's task (label smoothing 0.1, crops and flips, per-channel normalisation) on
    uint8 digits: every check runs (the probe's own forward pass prepares the images as the
    task does), and one batch of 16 overfits to near the smoothed floor 0.500, which a loss of
    0 is out of reach of."""
    task = ClassificationTask(
        label_smoothing=0.1, augment="crop-flip", image_mean=[0.1307], image_std=[0.3081]
    )
    assert mnist_uint8[0].dtype == torch.uint8

    def probe(lr=3e-3):
        return probe_on(small_cnn(), task, mnist_uint8, lr, 16, optimizer="adamw")

    initial = check_initial_loss(probe())
    assert initial.status == "ok" and initial.figures["expected"] == pytest.approx(math.log(10))
    assert check_nonfinite(probe()).status == "ok"
    assert check_gradient_flow(probe()).status in ("ok", "warn")
    verdict = check_overfit_batch(probe(), steps=150)
    floor = smoothed_target_entropy(0.1, 10)
    assert verdict.figures["floor"] == pytest.approx(floor, abs=1e-12)
    start = min(verdict.figures["first_loss"], math.log(10))
    assert verdict.figures["target"] == pytest.approx(floor + 0.1 * (start - floor), rel=1e-9)
    assert verdict.status == "ok", verdict.evidence
    assert "label-smoothed floor 0.5" in verdict.evidence
    assert verdict.figures["last_loss"] < 0.1 * start + 0.5  # a loss 0.1x the start: unreachable
    result = lr_range_test(probe(), mnist_uint8, 1e-5, 1.0, 10)
    assert len(result.lrs) >= 3 and math.isfinite(result.suggestion)


class Frozen(nn.Module):
    """A trainable last layer on fixed random features of 8 pixels: cannot fit 32 labels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Linear(784, 8)
        self.features.requires_grad_(False)
        self.last = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.tanh(self.features(x.float().flatten(1) / 255 - 0.5) * 0.01))


def test_overfit_under_label_smoothing_still_fails_a_model_that_cannot_learn(mnist_uint8):
    task = ClassificationTask(label_smoothing=0.1)
    verdict = check_overfit_batch(probe_on(Frozen(), task, mnist_uint8, lr=1e-3), steps=60)
    assert verdict.status == "fail" and "a bug, not a tuning problem" in verdict.fix
    assert verdict.figures["last_loss"] > verdict.figures["target"] > 0.5


def test_the_checks_leave_the_callers_model_as_it_was(gaussian):
    model = TwoLayer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = probe_on(model, BinaryTask(), gaussian, lr=1e-6)
    verdict = check_overfit_batch(probe, steps=50, lr=0.05)  # the lr given, not the config's
    assert verdict.figures["lr"] == 0.05 and "lr 0.05:" in verdict.evidence
    assert verdict.figures["last_loss"] < verdict.figures["first_loss"] / 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    ("lr", "steps", "status", "words"),
    [
        (1.0, 5, "ok", "in 1 steps (near 0 means below 0.1)"),
        (2.5, 2, "fail", "loss 1 -> 2.25 in 1 steps (near 0 means below 0.1); the loss rose"),
        (3.2, 3, "fail", "the loss jumped to 4.84 on the way"),
    ],
)
def test_overfit_tells_a_rising_or_jumping_loss_from_a_bug(lr, steps, status, words):
    """loss = w^2 from w = 1 under Adam: its first step moves w by exactly lr (m / sqrt(v) = 1),
    so lr 1 lands on 0 (ok), lr 2.5 on -1.5 (loss 2.25 > 1: rose) and lr 3.2 on -2.2 (4.84 > 4x
    the start) before coming back to 0.844 below the start (jumped): the lr, not a bug."""
    data = (torch.ones(16, 1), torch.zeros(16, 1))
    verdict = check_overfit_batch(probe_on(Scalar(), Task(nn.MSELoss()), data, lr, 16), steps)
    assert verdict.status == status and words in verdict.evidence, verdict.evidence
    if status == "fail":
        assert "lower the learning rate" in verdict.fix


# -- the LR range test on a case whose answer is known ------------------------------------------


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x


def test_lr_range_test_on_a_quadratic():
    """loss = (a/2) w^2 with plain SGD: w shrinks by (1 - lr a) per step and grows once lr a > 2.
    With lr_n growing by r per step, sum_{i<=n} lr_i ~ lr_n / (1 - 1/r), so
    loss_n ~ exp(-2 a lr_n / (1 - 1/r)) falls fastest at a lr = (1 - 1/r) / 2 (0.055 for 100
    steps over 5 decades), and it is lowest only after lr passes 2/a. The loss falls 1e17-fold:
    the blow-up is capped only after the minimum, so the fall keeps its shape."""
    a, steps = 4.0, 100
    x = torch.full((64, 1), math.sqrt(a / 2))
    data = (x, torch.zeros(64, 1))
    probe = probe_on(Scalar(), Task(nn.MSELoss()), data, 0.1, 16, optimizer="sgd", momentum=0.0)
    result = lr_range_test(probe, data, 1e-4, 10.0, steps)
    r = 10 ** (5 / (steps - 1))
    assert result.suggestion * a == pytest.approx((1 - 1 / r) / 2, rel=0.1), result.suggestion
    assert result.min_loss_lr * a > 2, result.min_loss_lr
    assert result.losses[0] == pytest.approx(a / 2, rel=1e-6)
    assert "passed 4x its minimum" in result.stop_reason
    assert result.lrs[1] / result.lrs[0] == pytest.approx(r, rel=1e-9)
    assert check_learning_rate(result, 2 / a).status == "warn"  # > 10x the suggestion
    assert check_learning_rate(result, result.min_loss_lr).status == "fail"
    assert check_learning_rate(result, result.suggestion).status == "ok"
    assert check_learning_rate(result, result.suggestion / 900).status == "ok"
    assert check_learning_rate(result, result.suggestion / 1100).status == "warn"
    assert check_learning_rate(result, result.suggestion * 9).status == "ok"


def test_lr_range_test_that_starts_past_the_blow_up():
    """loss = 2 w^2 (a = 4) under SGD from lr 1 (lr a >= 4 > 2): the loss grows 9-fold or more
    from the first step, so there is no fall; the sweep stops at its third step and suggests a
    tenth of the lr of its lowest loss, the start."""
    x = torch.full((16, 1), math.sqrt(2.0))
    data = (x, torch.zeros(16, 1))
    probe = probe_on(Scalar(), Task(nn.MSELoss()), data, 1.0, 16, optimizer="sgd", momentum=0.0)
    result = lr_range_test(probe, data, 1.0, 10.0, 10)
    assert len(result.lrs) == 3 and "passed 4x its minimum" in result.stop_reason
    assert result.losses[1] == pytest.approx(9 * result.losses[0], rel=1e-5)
    assert result.min_loss_lr == 1.0 and result.suggestion == pytest.approx(0.1)


# -- data thresholds ----------------------------------------------------------------------------


@pytest.mark.parametrize(("copied", "status"), [(0, "ok"), (1, "warn"), (2, "fail"), (3, "fail")])
def test_leakage_threshold(copied, status):
    """100 test rows, ``copied`` of them repeated from training: warn below 2%, fail from 2%."""
    g = np.random.default_rng(0)
    train, test = g.normal(size=(500, 3)), g.normal(size=(100, 3))
    test[:copied] = train[10 : 10 + copied]
    verdict = check_leakage(train, test)
    assert verdict.status == status and verdict.figures["shared_rows"] == copied
    if copied:
        assert verdict.evidence.startswith(f"{copied} of 100 test rows ({copied:.1f}%)")
        assert "10=0" in verdict.evidence


def test_scaling_threshold_and_band():
    """Columns with 60% of their values at 0.04 (inside +-0.05) fail; 40% at 0.04, or 60% at
    0.06 (outside the band), pass."""
    n = 100
    column = lambda share, value: np.r_[np.full(share, value), np.linspace(1, 3, n - share)]  # noqa: E731
    bad = check_scaling(np.c_[column(60, 0.04), column(40, 0.04)], ["a", "b"])
    assert (
        bad.status == "fail"
        and "1 of 2 features" in bad.evidence
        and "a (60% near 0" in bad.evidence
    )
    assert bad.figures["near_zero_fraction"] == {"a": 0.6, "b": 0.4}
    good = check_scaling(np.c_[column(60, 0.06), column(40, -0.04)], ["a", "b"])
    assert good.status == "ok" and good.figures["near_zero_fraction"] == {"a": 0.0, "b": 0.4}


@pytest.mark.parametrize(
    ("rare", "status"), [(250, "ok"), (150, "warn"), (30, "warn"), (10, "fail")]
)
def test_imbalance_thresholds(rare, status):
    """``rare`` of one class against 1000 of the other: ok from 0.2, warn below, fail below
    0.02."""
    labels = np.r_[np.zeros(1000), np.ones(rare)]
    verdict = check_imbalance(labels)
    assert verdict.figures["ratio"] == pytest.approx(rare / 1000)
    assert verdict.figures["counts"] == {"0": 1000, "1": rare}
    assert verdict.status == status, verdict.evidence
    if status != "ok":
        assert f"{1000 / (1000 + rare):.3f}" in verdict.fix  # the majority-class accuracy


def test_data_verdicts_judge_the_test_split_and_fall_back_to_validation():
    """Validation rows that repeat training rows are what early stopping sees; the leakage
    verdict is about the test split when there is one, and about validation only without it."""
    from mlenv.data import DataBundle
    from mlenv.doctor.data_checks import data_verdicts

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 4, generator=g), torch.arange(300) % 2
    train, leaking_val = (x[:200], y[:200]), (x[:50], y[:50])
    clean_test = (x[200:], y[200:])
    with_test = data_verdicts(DataBundle(train=train, val=leaking_val, test=clean_test))
    assert with_test[0].check == "leakage" and with_test[0].status == "ok", with_test[0].evidence
    without = data_verdicts(DataBundle(train=train, val=leaking_val))
    assert without[0].status == "fail" and "50 of 50 validation rows" in without[0].evidence


# -- run verdicts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("summary", "status"),
    [
        ({"status": "finished"}, "ok"),
        ({"status": "failed", "error": "CUDA out of memory"}, "fail"),
        ({"status": "diverged", "stop_reason": "loss nan"}, "fail"),
        ({"status": "interrupted"}, "warn"),
    ],
)
def test_run_verdict_follows_the_summary(tmp_path, summary, status):
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (verdict,) = run_verdicts(tmp_path)
    assert verdict.status == status
    reason = summary.get("error") or summary.get("stop_reason")
    assert verdict.evidence == f"status {summary['status']}" + (f": {reason}" if reason else "")


def test_run_verdict_on_a_baseline_far_ahead(tmp_path):
    summary = {"status": "finished", "test_acc": 0.60, "baseline_hgb_test_acc": 0.80}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    statuses = [v.status for v in run_verdicts(tmp_path)]
    assert statuses == ["ok", "fail"]
    summary["baseline_hgb_test_acc"] = 0.62
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert [v.status for v in run_verdicts(tmp_path)] == ["ok", "ok"]
    (tmp_path / "summary.json").unlink()
    assert run_verdicts(tmp_path)[0].status == "skip"


# -- the commands on recipes that set min_lr ----------------------------------------------------


@pytest.fixture(scope="module")
def text_file(shared_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "head.txt"
    path.write_text((shared_data / "text" / "tinyshakespeare.txt").read_text()[:3000])
    return path


TINY_LM = ["--threads", "1", "--device", "cpu", "--batch-size", "4", "--block-size", "8"]


def test_lr_find_on_a_recipe_with_min_lr(text_file, tmp_path, capsys):
    """lstm-char sets min_lr 1e-4; the sweep starts at 1e-7 below it."""
    argv = ["lr-find", "lstm-char", "--path", str(text_file), *TINY_LM]
    argv += ["--embed", "8", "--hidden", "8", "--layers", "1", "--lr-steps", "10"]
    assert main([*argv, "--out", str(tmp_path / "lr")]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert result["lrs"][0] == pytest.approx(1e-7)


def test_doctor_on_gpt_char_2019_judges_overfit_against_the_smoothed_floor(
    text_file, tmp_path, capsys
):
    """gpt-char-2019: label smoothing 0.1 over the file's characters, min_lr 1e-4: the overfit
    check passes near the floor, and the lr check runs."""
    argv = ["doctor", "gpt-char-2019", "--path", str(text_file), *TINY_LM]
    argv += ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--lr", "0.01"]
    argv += ["--checks", "overfit,lr", "--overfit-steps", "150", "--lr-steps", "10"]
    code = main([*argv, "--out", str(tmp_path / "d")])
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "d" / "doctor.json").read_text())
    overfit = next(v for v in report["verdicts"] if v["check"] == "overfit one batch")
    vocab = len(set(text_file.read_text()[:2700]))
    assert overfit["figures"]["floor"] == pytest.approx(smoothed_target_entropy(0.1, vocab))
    assert overfit["status"] == "ok", printed
    assert "learning rate" in printed and code == (
        1 if any(v["status"] == "fail" for v in report["verdicts"]) else 0
    )
