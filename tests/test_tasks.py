"""The tasks' numbers on hand-computed values: losses, probabilities and metrics of
classification, language-model, binary and regression, and the distributed helpers' answers.

Models here return given outputs (the input itself, or fixed logits), so every expected value
is written out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mlenv.runtime import distributed
from mlenv.train.tasks import BinaryTask, ClassificationTask, LanguageModelTask
from mlenv.train.tasks_regression import RegressionTask


class Given(nn.Module):
    """Returns its input (times a parameter of 1, so a Trainer can set it up; a single column
    (B, 1) as (B,) for the one-unit heads); ``output`` is the binary head it claims to be."""

    def __init__(self, output: str = "logits") -> None:
        super().__init__()
        self.output = output
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * self.scale
        return out[:, 0] if self.output != "two-class" and out.shape[1:] == (1,) else out


class FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.logits


def log_softmax_by_hand(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.exp().sum(dim=-1, keepdim=True).log()


# ---------------------------------------------------------------- classification

LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.5, 0.0]])
LABELS = torch.tensor([0, 1, 0])  # argmax: 0, 2, 0 -> two of three right


def test_classification_loss_accuracy_and_probabilities():
    task = ClassificationTask()
    loss, out = task.forward_pass(Given(), (LOGITS, LABELS), task.get_criterion())
    log_p = log_softmax_by_hand(LOGITS)
    assert loss.item() == pytest.approx(-(log_p[0, 0] + log_p[1, 1] + log_p[2, 0]).item() / 3)
    assert task.batch_metrics(out, (LOGITS, LABELS))["acc"].item() == pytest.approx(2 / 3)
    p = task.inference(Given(), (LOGITS, LABELS))
    assert p[0].tolist() == pytest.approx([e / (math.exp(2) + 2) for e in (math.exp(2), 1, 1)])
    assert p.sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_classification_label_smoothing_trains_towards_the_smoothed_targets():
    eps = 0.3
    task = ClassificationTask(label_smoothing=eps)
    loss, _ = task.forward_pass(Given(), (LOGITS, LABELS), task.get_criterion())
    log_p = log_softmax_by_hand(LOGITS)
    # target (1 - eps) * onehot + eps / C: the cross-entropy of each row, averaged
    targets = torch.full((3, 3), eps / 3) + (1 - eps) * torch.eye(3)[LABELS]
    assert loss.item() == pytest.approx(-(targets * log_p).sum(dim=1).mean().item(), rel=1e-6)


def test_mixup_alone_mixes_the_training_batch_and_its_labels():
    """With ``mixup`` only (no CutMix), a training pass trains on mixed images towards mixed
    labels: its loss is the cross-entropy against ``lam * y + (1 - lam) * y[perm]`` of the
    mixed images; at evaluation the batch is left as it is."""
    images = torch.arange(4 * 2 * 2, dtype=torch.float32).reshape(4, 1, 2, 2) / 16  # (B, C, H, W)
    labels = torch.tensor([0, 1, 2, 3])
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    torch.manual_seed(0)
    nn.init.normal_(model[1].weight)
    task = ClassificationTask(mixup=0.4)
    criterion = task.get_criterion()
    torch.manual_seed(1)
    loss, _ = task.forward_pass(model, (images, labels), criterion)
    torch.manual_seed(1)  # the same draws: lam from Beta(0.4, 0.4), then the partners
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(4)
    mixed = lam * images + (1 - lam) * images[perm]
    log_p = log_softmax_by_hand(model(mixed))
    by_hand = -(lam * log_p[range(4), labels] + (1 - lam) * log_p[range(4), labels[perm]]).mean()
    assert 0.01 < lam < 0.99 and not torch.equal(perm, torch.arange(4))
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    model.eval()
    plain, _ = task.forward_pass(model, (images, labels), criterion)
    log_p = log_softmax_by_hand(model(images))
    assert plain.item() == pytest.approx(-log_p[range(4), labels].mean().item(), rel=1e-6)


# ---------------------------------------------------------------- language model


def test_language_model_uniform_logits_give_two_bits_and_perplexity_four():
    """Uniform logits over 4 tokens: nll ln 4, 2 bits a token, perplexity 4 (closed form)."""
    targets = torch.tensor([[0, 1, 2], [3, 0, 1]])  # (B=2, T=3), V=4
    task = LanguageModelTask()
    model = FixedLogits(torch.zeros(2, 3, 4))
    loss, predictions = task.forward_pass(model, (targets, targets), task.get_criterion())
    assert loss.item() == pytest.approx(math.log(4))
    metrics = task.epoch_metrics(predictions, targets)
    assert metrics["nll"] == pytest.approx(math.log(4))
    assert metrics["bits"] == pytest.approx(2.0)
    assert metrics["ppl"] == pytest.approx(4.0)


def test_language_model_token_accuracy_nll_and_probabilities():
    logits = torch.zeros(2, 3, 4)
    logits[0, 0, 0] = logits[0, 1, 3] = logits[1, 1, 2] = logits[1, 2, 1] = 2.0
    targets = torch.tensor([[0, 1, 2], [3, 0, 1]])  # argmax 0 3 0 / 0 2 1: 2 of 6 right
    task = LanguageModelTask()
    _, predictions = task.forward_pass(
        FixedLogits(logits), (targets, targets), task.get_criterion()
    )
    assert predictions.shape == (2, 3, 2)
    assert task.batch_metrics(predictions, (targets, targets))["acc"].item() == pytest.approx(2 / 6)
    log_p = log_softmax_by_hand(logits)
    token_nll = -log_p.gather(-1, targets[..., None])[..., 0]  # (B, T)
    assert predictions[..., 0].flatten().tolist() == pytest.approx(token_nll.flatten().tolist())
    assert task.epoch_metrics(predictions, targets)["ppl"] == pytest.approx(
        math.exp(token_nll.mean().item())
    )
    p = task.inference(FixedLogits(logits), (targets,))
    assert p.sum(dim=-1).flatten().tolist() == pytest.approx([1.0] * 6)
    assert p[0, 0, 0].item() == pytest.approx(math.exp(2) / (math.exp(2) + 3))


def test_language_model_label_smoothing_is_the_smoothed_token_loss():
    eps = 0.2
    logits = torch.tensor([[[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]]])  # (1, 2, 3)
    targets = torch.tensor([[0, 2]])
    task = LanguageModelTask(label_smoothing=eps)
    loss, predictions = task.forward_pass(
        FixedLogits(logits), (targets, targets), task.get_criterion()
    )
    log_p = log_softmax_by_hand(logits[0])  # (2, 3)
    nll = -log_p[[0, 1], [0, 2]]
    smoothed = ((1 - eps) * nll - eps * log_p.mean(dim=1)).mean()
    assert loss.item() == pytest.approx(smoothed.item(), rel=1e-6)
    # the metrics stay the plain negative log-likelihood
    assert predictions[..., 0].flatten().tolist() == pytest.approx(nll.tolist())


# ---------------------------------------------------------------- binary


@pytest.mark.parametrize("output", ["logits", "sigmoid", "two-class"])
def test_binary_probability_of_label_one_and_loss_for_each_head(output):
    y = torch.tensor([1.0, 0.0, 1.0])
    if output == "two-class":
        x = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])  # p(1) = sigmoid(x1 - x0)
        p = torch.sigmoid(x[:, 1] - x[:, 0])
    elif output == "sigmoid":
        x = p = torch.tensor([0.8, 0.3, 0.6])
    else:
        x = torch.tensor([1.0, -2.0, 0.0])
        p = 1 / (1 + torch.exp(-x))
    task = BinaryTask()
    model = Given(output)
    loss, probability = task.forward_pass(model, (x, y), task.get_criterion(model))
    assert probability.tolist() == pytest.approx(p.tolist(), rel=1e-6)
    assert task.inference(model, (x, y)).tolist() == pytest.approx(p.tolist(), rel=1e-6)
    by_hand = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_binary_metrics_and_report_use_the_threshold(tmp_path):
    from mlenv.data import DataBundle
    from mlenv.track.run import Run
    from mlenv.train.trainer import Trainer

    p = torch.tensor([0.6, 0.8, 0.3, 0.75])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    task = BinaryTask(threshold=0.7)
    m = task.epoch_metrics(p, y)  # predicted at 0.7: 0, 1, 0, 1
    assert (m["acc"], m["precision"], m["recall"]) == (0.5, 0.5, 0.5)
    assert task.metric_modes()["log_loss"] == "min" and task.metric_modes()["auc"] == "max"

    # baselines fitted on the training rows (y = x < 0.5), scored on test rows labelled the
    # other way (y = x > 0.5): every baseline is wrong on every test row
    x_train = torch.linspace(0.01, 0.99, 80)[:, None]
    x_test = torch.tensor([[0.6], [0.8], [0.3], [0.75], [0.1], [0.95]])
    bundle = DataBundle(
        train=(x_train, (x_train[:, 0] < 0.5).float()),
        test=(x_test, (x_test[:, 0] > 0.5).float()),
    )
    task = BinaryTask(threshold=0.7, baselines=True)
    trainer = Trainer(model=Given("sigmoid"), task=task, threads=1, progress=False)
    run = Run(tmp_path / "run")
    extra = task.report(trainer, bundle, run)  # the model's probability is x itself
    table = (run.path / "test_predictions.csv").read_text().splitlines()
    assert table[0] == "row,label,probability,predicted"
    assert [line.split(",")[3] for line in table[1:]] == ["0", "1", "0", "1", "0", "1"]
    assert extra["baseline_logreg_test_acc"] == 0.0
    assert extra["baseline_hgb_test_acc"] == 0.0
    assert (run.plots / "confusion_matrix.png").is_file()
    # labelled as on the training rows: the baselines are right everywhere, the model at 0.7
    # misses x = 0.6 (5 of 6), and the warning says so
    bundle.test = (x_test, (x_test[:, 0] > 0.5).float())
    bundle.train = (x_train, (x_train[:, 0] > 0.5).float())
    extra = task.report(trainer, bundle, None)
    assert extra["baseline_logreg_test_acc"] == 1.0
    assert "test accuracy, the model 0.8333" in extra["baseline_warning"]


# ---------------------------------------------------------------- regression


def test_regression_loss_is_the_mean_squared_error_and_draws_the_fit(tmp_path):
    from mlenv.data import DataBundle
    from mlenv.track.run import Run
    from mlenv.train.trainer import Trainer

    task = RegressionTask()
    batch = (torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [4.0]]))  # (B, 1) each
    loss, _ = task.forward_pass(nn.Identity(), batch, task.get_criterion())
    assert loss.item() == pytest.approx((1 + 4) / 2)
    trainer = Trainer(model=nn.Linear(1, 1), task=task, threads=1, progress=False)
    x = torch.linspace(-1, 1, 8)[:, None]
    run = Run(tmp_path / "run")
    assert task.report(trainer, DataBundle(train=(x, x), test=(x, 2 * x)), run) == {
        "fit_plot": str(run.plots / "fit.png")
    }
    assert (run.plots / "fit.png").is_file()
    wide = torch.zeros(8, 2)  # two input features: no curve to draw
    assert task.report(trainer, DataBundle(train=(wide, x), test=(wide, x)), run) == {}


# ---------------------------------------------------------------- distributed helpers


def test_launched_needs_torchrun_and_more_than_one_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not distributed.launched()  # no RANK: not a torchrun worker
    monkeypatch.setenv("RANK", "1")
    assert distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()  # a world of one is a single process


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")  # second machine, second process on it
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.process_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert distributed.process_device(torch.device("cpu")) == torch.device("cpu")


def test_a_lost_peer_is_told_from_other_errors():
    assert distributed.lost_peer(RuntimeError("gloo: Connection reset by peer"))
    assert distributed.lost_peer(RuntimeError("[x] Connection closed by peer [y]"))
    assert distributed.lost_peer(RuntimeError("write: Broken pipe"))
    assert not distributed.lost_peer(RuntimeError("CUDA out of memory"))
    assert distributed.fsdp_supported("cpu") and not distributed.fsdp_supported("mps")


def test_a_single_process_is_rank_zero_of_one():
    assert distributed.world() == distributed.World(0, 1, 0, 1)
    assert distributed.is_main_process()
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object(3) == 3
    assert np.array_equal(distributed.all_reduce_sum(torch.ones(2)).numpy(), [1.0, 1.0])


# ---------------------------------------------------------------- vae, hvae


def test_vae_and_hvae_predict_the_mean_image_sigmoid_of_the_logits():
    from mlenv.models import create_model
    from mlenv.train.tasks import HVAETask, VAETask

    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    vae = create_model("vae", seed=0, in_features=6, hidden=4, latent=2).eval()
    hvae = create_model("hvae", seed=0, in_features=6, hidden=4, latent=2).eval()
    with torch.no_grad():  # eval mode: the latent means, so both calls see the same logits
        for task, model, logits in (
            (VAETask(), vae, vae(x)[0]),
            (HVAETask(), hvae, hvae(x).logits),
        ):
            assert torch.allclose(task.inference(model, (x,)), 1 / (1 + torch.exp(-logits)))


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5, float("nan")])
def test_binary_threshold_must_be_a_probability_strictly_inside(threshold):
    from mlenv.errors import ConfigError

    with pytest.raises(ConfigError, match=r"threshold: accepts a probability in \(0, 1\), got"):
        BinaryTask(threshold=threshold)
