"""mlenv doctor and lr-find: every check flags a constructed failing case and passes a healthy
one, on real data (magic04, with injected outlier rows or repeated rows where the case needs
them); the robust and quantile scalers; the training-time warning and the baselines line."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mlenv.cli import main
from mlenv.config import TrainConfig
from mlenv.data.tabular import load_split, read_for_prediction, tabular_csv
from mlenv.doctor.data_checks import (
    check_constant,
    check_imbalance,
    check_leakage,
    check_scaling,
    data_verdicts,
)
from mlenv.doctor.gradients import check_gradient_flow
from mlenv.doctor.lm_checks import check_padding_ignored, check_round_trip
from mlenv.doctor.loss_checks import check_initial_loss
from mlenv.doctor.lr_find import check_learning_rate, lr_range_test, plot_lr_find
from mlenv.doctor.nonfinite import check_nonfinite
from mlenv.doctor.overfit import check_overfit_batch
from mlenv.doctor.probe import first_batch, make_probe
from mlenv.errors import ConfigError
from mlenv.models.mlp import binary_mlp
from mlenv.train.baselines import baseline_warning
from mlenv.train.tasks import BinaryTask

ROWS = 4000  # of magic04 (19020 rows): enough for the cases, fast enough for the suite
OUTLIER_ROWS = 10
OUTLIER_SD = 1e4  # the injected rows sit this many standard deviations out in every feature


@pytest.fixture(scope="module")
def files(shared_data, tmp_path_factory):
    """clean: 4000 magic04 rows without duplicates; outliers: the same plus 10 rows at 1e4
    standard deviations; leaking: clean plus 800 of its rows repeated."""
    folder = tmp_path_factory.mktemp("doctor-data")
    frame = pd.read_csv(shared_data / "tabular" / "magic04.data", header=None, dtype=str)
    frame = frame.drop_duplicates(subset=list(range(10))).sample(ROWS, random_state=0)
    clean = folder / "clean.csv"
    frame.to_csv(clean, header=False, index=False)
    x = frame.iloc[:, :10].astype(float).to_numpy()
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(OUTLIER_ROWS, 10))
    extreme = x.mean(axis=0) + signs * OUTLIER_SD * x.std(axis=0)
    lines = [
        ",".join(f"{v:.6g}" for v in row) + ("," + ("g" if i % 2 else "h"))
        for i, row in enumerate(extreme)
    ]
    outliers = folder / "outliers.csv"
    outliers.write_text(clean.read_text() + "\n".join(lines) + "\n")
    leaking = folder / "leaking.csv"
    pd.concat([frame, frame.sample(800, random_state=0)]).to_csv(leaking, header=False, index=False)
    return {"clean": clean, "outliers": outliers, "leaking": leaking}


def bundle_of(path, scaler="standard"):
    return tabular_csv(seed=0, data=str(path), no_header=True, scaler=scaler)


def probe_of(bundle, model=None, lr=5e-4, **config):
    torch.manual_seed(0)
    model = model if model is not None else binary_mlp(bundle.model_kwargs["in_features"])
    cfg = TrainConfig(lr=lr, batch_size=32, threads=1, progress=False, device="cpu", **config)
    return make_probe(model, BinaryTask(), cfg, first_batch(bundle.train, 32, 0))


# -- data ---------------------------------------------------------------------------------------


def test_scaling_check_flags_outliers_and_passes_clean_data(files):
    bad = check_scaling(bundle_of(files["outliers"]).test[0].numpy(), [f"x{j}" for j in range(10)])
    assert bad.status == "fail"
    assert "10 of 10 features" in bad.evidence and "--scaler robust" in bad.fix
    assert min(bad.figures["near_zero_fraction"].values()) > 0.9
    good = check_scaling(bundle_of(files["clean"]).test[0].numpy(), [f"x{j}" for j in range(10)])
    assert good.status == "ok", good.evidence
    # the robust and quantile scalers are not dominated by the same rows
    for scaler in ("robust", "quantile"):
        fixed = bundle_of(files["outliers"], scaler).test[0].numpy()
        assert check_scaling(fixed, [f"x{j}" for j in range(10)]).status == "ok", scaler


def test_leakage_check_flags_repeated_rows(files):
    leaking = bundle_of(files["leaking"])
    verdict = check_leakage(leaking.train[0].numpy(), leaking.test[0].numpy())
    assert verdict.status == "fail" and verdict.figures["share"] > 0.1, verdict.evidence
    clean = bundle_of(files["clean"])
    assert check_leakage(clean.train[0].numpy(), clean.test[0].numpy()).status == "ok"


def test_imbalance_and_constant_column_checks(files):
    bundle = bundle_of(files["clean"])
    x, y = bundle.train[0].numpy(), bundle.train[1].numpy()
    assert check_imbalance(y).status == "ok"
    rare = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:20]])
    verdict = check_imbalance(y[rare])  # 20 of one class against ~1800 of the other
    assert verdict.status == "fail" and "majority" in verdict.fix
    columns = [f"x{j}" for j in range(11)]
    assert check_constant(np.c_[x, np.ones(len(x))], columns).status == "warn"
    assert "x10" in check_constant(np.c_[x, np.ones(len(x))], columns).evidence
    assert check_constant(x, columns[:10]).status == "ok"
    statuses = {v.check: v.status for v in data_verdicts(bundle)}
    assert statuses == {
        "leakage": "ok",
        "scaling": "ok",
        "class balance": "ok",
        "constant columns": "ok",
    }


# -- scalers ------------------------------------------------------------------------------------


def test_scalers_fit_on_training_rows_and_repeat_for_prediction(files):
    from sklearn.preprocessing import RobustScaler

    split = load_split(str(files["outliers"]), 0, no_header=True, scaler="robust")
    on_train = RobustScaler().fit(split.table.features[split.train])
    np.testing.assert_allclose(split.scale_mean, on_train.center_, rtol=1e-12)
    np.testing.assert_allclose(split.scale_scale, on_train.scale_, rtol=1e-12)
    for scaler in ("robust", "quantile"):
        split = load_split(str(files["outliers"]), 0, no_header=True, scaler=scaler)
        assert split.state()["scaler"] == scaler
        scaled, _, _ = read_for_prediction(files["outliers"], split.state(), no_header=True)
        np.testing.assert_array_equal(scaled[split.test], split.scaled(split.test))
    q = load_split(str(files["outliers"]), 0, no_header=True, scaler="quantile")
    train = q.scaled(q.train)
    assert abs(np.median(train)) < 0.01 and 0.9 < np.percentile(train, 84) < 1.1  # ~ N(0, 1)
    with pytest.raises(ConfigError, match="--scaler: accepts standard, robust, quantile"):
        load_split(str(files["clean"]), 0, no_header=True, scaler="minmax")


def test_robust_and_quantile_scalers_close_the_gap_to_gradient_boosting(files):
    """The issue's case: with a few rows at 1e4 standard deviations the standard scaler squashes
    every feature and the MLP learns nothing beyond the majority class; robust and quantile
    scaling recover most of the gap to HistGradientBoosting (which ignores scaling)."""
    from mlenv.train.tasks import fit_baselines
    from mlenv.train.trainer import Trainer

    accuracy = {}
    for scaler in ("standard", "robust", "quantile"):
        bundle = bundle_of(files["outliers"], scaler)
        torch.manual_seed(0)
        model = binary_mlp(10)
        cfg = TrainConfig(epochs=4, lr=5e-4, batch_size=32, threads=1, progress=False)
        trainer = Trainer(cfg, model, task=BinaryTask(), device="cpu")
        trainer.fit(bundle.train, bundle.val)
        accuracy[scaler] = trainer.evaluate(bundle.test)["test_acc"]
    hgb = fit_baselines(bundle_of(files["outliers"]))["baseline_hgb_test_acc"]
    majority = 1 - bundle_of(files["outliers"]).test[1].float().mean().item()
    gap = hgb - accuracy["standard"]
    assert accuracy["standard"] < majority + 0.02, accuracy  # learned nothing beyond majority
    assert gap > 0.15, (hgb, accuracy)
    for scaler in ("robust", "quantile"):
        assert accuracy[scaler] - accuracy["standard"] >= 0.5 * gap, (scaler, accuracy, hgb)


# -- training prints the data warning and the baselines line ------------------------------------


def test_training_warns_on_outliers_and_leakage_not_on_clean_data(files, tmp_path, capsys):
    for name, expected in (
        ("outliers", "outliers dominate"),
        ("leaking", "leakage"),
        ("clean", None),
    ):
        argv = ["train", "tabular-binary", "--data", str(files[name]), "--no-header"]
        argv += ["--fast-dev-run", "true", "--progress", "false", "--threads", "1"]
        assert main(argv) == 0
        out = capsys.readouterr().out
        warnings = [line for line in out.splitlines() if line.startswith("warning:")]
        if expected is None:
            assert warnings == [], warnings
        else:
            assert len(warnings) == 1 and expected in warnings[0], out
            assert "mlenv doctor" in warnings[0]


def test_baseline_line(files, tmp_path, capsys):
    beaten = {"baseline_logreg_test_acc": 0.70, "baseline_hgb_test_acc": 0.886}
    line = baseline_warning(0.648, beaten)
    assert "HistGradientBoosting reaches 0.8860" in line and "mlenv doctor" in line
    assert baseline_warning(0.86, beaten) is None  # within the margin
    assert baseline_warning(0.648, {}) is None


@pytest.fixture(scope="module")
def outlier_run(files, tmp_path_factory):
    """A finished tabular-binary run on the outlier file, with baselines."""
    runs = tmp_path_factory.mktemp("runs")
    argv = ["train", "tabular-binary", "--data", str(files["outliers"]), "--no-header"]
    argv += ["--epochs", "1", "--baselines", "true", "--runs-dir", str(runs)]
    argv += ["--progress", "false", "--threads", "1"]
    assert main(argv) == 0
    (run,) = (runs / "tabular-binary").iterdir()
    return run


def test_training_with_baselines_says_they_beat_the_model(outlier_run):
    summary = json.loads((outlier_run / "summary.json").read_text())
    assert summary["baseline_hgb_test_acc"] - summary["test_acc"] > 0.15
    assert "HistGradientBoosting reaches" in summary["baseline_warning"]


# -- model checks -------------------------------------------------------------------------------


class DetachedMLP(nn.Module):
    """An MLP whose first layer's output is detached: no gradient reaches that layer."""

    output = "logits"

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(10, 32)
        self.act = nn.ReLU()
        self.last = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.act(self.first(x)).detach()).squeeze(1)


def test_gradient_flow_flags_a_detached_layer(files, tmp_path):
    bundle = bundle_of(files["clean"])
    bad = check_gradient_flow(probe_of(bundle, DetachedMLP()), tmp_path / "bad.png")
    assert bad.status == "fail"
    assert "no gradient reaches first.weight, first.bias" in bad.evidence
    assert (tmp_path / "bad.png").stat().st_size > 1000
    good = check_gradient_flow(probe_of(bundle), tmp_path / "good.png")
    assert good.status == "ok", good.evidence
    assert all(g and g > 0 for g in good.figures["grad_norms"].values())


def test_gradient_flow_flags_dead_relus(files):
    bundle = bundle_of(files["clean"])
    torch.manual_seed(0)
    model = binary_mlp(10)
    with torch.no_grad():
        model.net[0].bias.fill_(-100.0)  # every first-layer unit negative: ReLU outputs 0
    verdict = check_gradient_flow(probe_of(bundle, model))
    assert verdict.status == "fail"  # the first layer then gets no gradient either
    assert "dead ReLUs" in verdict.evidence and "net.1 100%" in verdict.evidence


def test_initial_loss_flags_a_huge_last_layer(files):
    bundle = bundle_of(files["clean"])
    good = check_initial_loss(probe_of(bundle))
    assert good.status == "ok" and abs(good.figures["expected"] - math.log(2)) < 1e-12
    torch.manual_seed(0)
    model = binary_mlp(10)
    with torch.no_grad():
        model.net[-1].weight.mul_(1000.0)
    bad = check_initial_loss(probe_of(bundle, model))
    assert bad.status == "fail" and bad.figures["ratio"] > 10, bad.evidence
    assert "last layer" in bad.fix


def test_overfit_flags_a_learning_rate_ten_times_too_high(files):
    """On this MLP Adam overfits one batch at 0.05 in a few steps; at 0.5 the loss jumps and
    stalls far from 0."""
    bundle = bundle_of(files["clean"])
    good = check_overfit_batch(probe_of(bundle, lr=0.05))
    assert good.status == "ok", good.evidence
    bad = check_overfit_batch(probe_of(bundle, lr=0.5))
    assert bad.status == "fail" and "lower the learning rate" in bad.fix, bad.evidence
    assert "the loss jumped" in bad.evidence or "ReLU units of net.1 dead" in bad.evidence


def test_lr_range_test_flags_a_learning_rate_ten_times_too_high(files, tmp_path):
    """The range test is the sharper check: it suggests 0.004 on this MLP and its smoothed loss
    is lowest near 0.05 (flat from 0.01 to 0.1: noisy batches of 32), so 0.005 passes, 0.05
    (which still overfits one batch) is flagged, more than 10x the suggestion, and 0.1 fails."""
    bundle = bundle_of(files["clean"])
    result = lr_range_test(probe_of(bundle), bundle.train, 1e-5, 10.0, 100)
    plot = plot_lr_find(result, tmp_path / "lr.png")
    assert plot.stat().st_size > 1000
    assert 2e-3 < result.suggestion < 0.008 and 0.01 < result.min_loss_lr < 0.1, result.to_dict()
    assert check_learning_rate(result, 0.005).status == "ok"
    assert check_learning_rate(result, 0.05).flagged
    assert check_learning_rate(result, 0.1).status == "fail"
    assert check_learning_rate(result, 1e-7).status == "warn"  # far too low
    # a sweep that blows up stops early
    steep = lr_range_test(probe_of(bundle, optimizer="sgd"), bundle.train, 1e-3, 1e6, 60)
    assert "non-finite" in steep.stop_reason or "passed 4x" in steep.stop_reason
    assert steep.lrs[-1] < 1e6


def test_lr_range_test_is_not_pulled_left_by_the_blow_up():
    """A coarse sweep (60 steps over 8 decades) on digits: the raw loss falls from 2.2 to 0.61
    between 1e-2 and 0.036 and blows up past 0.05. The losses of the blow-up after the minimum
    are capped (at the highest loss before it) before the smoothing, so they do not drag the
    lowest loss back to where the raw loss has not fallen yet (uncapped: 3e-4, and a suggestion
    of 6e-6; capped at 4x the minimum: 0.014 and 0.004). A sweep of 20 steps (2.6x per step)
    finds the same region (capped at 4x the minimum, its lowest loss was the 1e-7 start)."""
    from mlenv.config import load_recipe, resolve
    from mlenv.train.run import build

    cfg = resolve(load_recipe("digits-mlp"), ["--threads", "1", "--device", "cpu"])
    bundle, model, task = build(cfg)
    probe = make_probe(model, task, cfg.train, first_batch(bundle.train, 32, 0))
    result = lr_range_test(probe, bundle.train, 1e-7, 10.0, 60)
    assert 0.01 < result.suggestion < result.min_loss_lr < 0.05, result.to_dict()
    assert 0.02 < result.lrs[int(np.argmin(result.losses))] < 0.05  # the raw loss's minimum
    assert check_learning_rate(result, cfg.train.lr).status == "ok"  # the recipe's 1e-3
    coarse = lr_range_test(
        make_probe(model, task, cfg.train, probe.batch), bundle.train, 1e-7, 10.0, 20
    )
    assert 0.005 < coarse.suggestion < coarse.min_loss_lr < 0.5, coarse.to_dict()
    assert check_learning_rate(coarse, cfg.train.lr).status == "ok"
    assert check_initial_loss(make_probe(model, task, cfg.train, probe.batch)).figures[
        "expected"
    ] == pytest.approx(math.log(10))


def test_overfit_flags_a_model_that_cannot_learn(files):
    """A detached first layer leaves a linear model on fixed random features; on the squashed
    outlier data it cannot fit one batch: a bug, not tuning."""
    bundle = bundle_of(files["outliers"])
    verdict = check_overfit_batch(probe_of(bundle, DetachedMLP(), lr=5e-4), steps=200)
    assert verdict.status == "fail" and "a bug, not a tuning problem" in verdict.fix


class LogOutput(nn.Module):
    """Logits through log(): NaN for the negative ones."""

    output = "logits"

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(10, 1)
        self.log = LogModule()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log(self.linear(x)).squeeze(1)


class LogModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


def test_nonfinite_check_names_the_module_and_term(files):
    bundle = bundle_of(files["clean"])
    bad = check_nonfinite(probe_of(bundle, LogOutput()))
    assert bad.status == "fail"
    assert "'loss'" in bad.evidence and "log (LogModule)" in bad.evidence
    assert check_nonfinite(probe_of(bundle)).status == "ok"


# -- language models ----------------------------------------------------------------------------


class Lowercase:
    """A tokenizer that loses case: the round trip gives other text back."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text.lower()]

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))


def test_language_model_checks(shared_data):
    from mlenv.data.text import CharVocab

    text = "The quick brown fox jumps over the lazy dog. " * 3
    assert check_round_trip(CharVocab(text), text).status == "ok"
    bad = check_round_trip(Lowercase(), text)
    assert bad.status == "fail" and "character 0" in bad.evidence
    assert (
        check_padding_ignored(nn.CrossEntropyLoss(ignore_index=0), 50, pad_target=0).status == "ok"
    )
    assert check_padding_ignored(nn.CrossEntropyLoss(), 50, pad_target=0).status == "fail"


# -- the commands -------------------------------------------------------------------------------


def test_doctor_command_on_the_outlier_data(files, tmp_path, capsys):
    out = tmp_path / "doctor"
    argv = ["doctor", "tabular-binary", "--data", str(files["outliers"]), "--no-header"]
    checks = ["--checks", "data,initial-loss,gradients,overfit", "--overfit-steps", "5"]
    code = main([*argv, *checks, "--threads", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed  # a check failed
    assert "[fail] scaling: outliers dominate the standard scaling" in printed
    assert "fix: --scaler robust" in printed
    assert "[ok] initial loss" in printed
    report = json.loads((out / "doctor.json").read_text())
    verdicts = {v["check"]: v for v in report["verdicts"]}
    assert verdicts["scaling"]["status"] == "fail"
    assert verdicts["overfit one batch"]["figures"]["steps"] == 5  # --overfit-steps reaches it
    assert (out / "gradient_flow.png").is_file()
    code = main([*argv, "--scaler", "robust", "--checks", "data", "--out", str(out), "--force"])
    assert code == 0 and "[ok] scaling" in capsys.readouterr().out
    # the exit status counts every verdict, the first one too (leakage, on the leaking file)
    leaking = ["doctor", "tabular-binary", "--data", str(files["leaking"]), "--no-header"]
    code = main([*leaking, "--checks", "data", "--out", str(out), "--force"])
    printed = capsys.readouterr().out
    assert code == 1 and printed.startswith("[fail] leakage"), printed


def test_doctor_on_a_finished_run(outlier_run, tmp_path, capsys):
    code = main(
        ["doctor", "--run", str(outlier_run), "--checks", "data", "--out", str(tmp_path / "d")]
    )
    printed = capsys.readouterr().out
    assert code == 1
    assert "[ok] run: status finished" in printed
    assert "[fail] baselines: HistGradientBoosting reaches" in printed
    assert "[fail] scaling" in printed


def test_lr_find_command(files, tmp_path, capsys):
    out = tmp_path / "lr"
    argv = ["lr-find", "tabular-binary", "--data", str(files["clean"]), "--no-header"]
    assert main([*argv, "--lr-steps", "60", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    suggested = json.loads((out / "lr_find.json").read_text())["suggestion"]
    assert f"suggested lr: {suggested:.3g}" in printed
    assert (out / "lr_find.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["doctor"], "mlenv doctor: name a recipe"),
        (["doctor", "tabular-binary", "--checks", "data,bogus"], "--checks: accepts a comma"),
        (["lr-find", "tabular-binary", "--start-lr", "-1"], "--start-lr: accepts a number > 0"),
        (["lr-find", "tabular-binary", "--lr-steps", "3"], "--lr-steps: accepts an integer >= 10"),
        (["doctor", "--run", "nowhere"], "--run: nowhere is not a run folder"),
        (["train", "tabular-binary", "--scaler", "minmax"], "scaler"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())
