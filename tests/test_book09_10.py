"""Book steps 09 and 10 end to end on a slice of MNIST: one epoch of a narrow UNet trained by the
mlenv Trainer through the packaged recipes, the trained run loaded back and sampled with a few DDIM
steps, plots and results.json written; step 10 judged by a briefly trained judge."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from mlenv.book import step09, step10
from mlenv.book._common import BookOptions
from mlenv.cli import main
from mlenv.errors import ConfigError
from mlenv.models.diffusion import DDIMScheduler, DDPMScheduler
from mlenv.train.run import load_run

NARROW = {"channels": [8, 16, 16], "time_dim": 16}  # a UNet of ~25k weights


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def options_for(tmp_path, mnist_root, **values):
    settings = {"epochs": 1, "device": "cpu", "limit": 512, "sample_steps": 5, "threads": 1}
    settings.update(values)
    return BookOptions(runs_dir=str(tmp_path / "runs"), data_dir=str(mnist_root), **settings)


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_step09_trains_samples_and_writes_its_plots(tmp_path, mnist_root, capsys):
    out = tmp_path / "out"
    out.mkdir()
    results = step09.run(out, None, options_for(tmp_path, mnist_root), **NARROW)
    stored = json.loads((out / "results.json").read_text())
    assert stored["losses"] == results["losses"] and len(stored["losses"]) == 1
    # one epoch of 4 batches from a fresh network: the noise-prediction MSE starts near 1
    assert 0.6 < stored["losses"][0] < 1.3
    assert stored["sampler"] == "ddim (5 steps, eta 0)" and stored["sample_steps"] == 5
    assert stored["trajectory_steps"] == [999, 799, 599, 399, 199]
    assert stored["precision"] == "bf16"  # the recipe's default (measured fastest on the CPU)
    loaded = load_run(stored["run_dir"])
    assert stored["parameters"] == sum(p.numel() for p in loaded.model.parameters())
    # the book's form: [0, 1] images, the network told t = 1 .. T, no clamp between steps
    assert loaded.config.recipe == "mnist-ddpm-book" and loaded.config.model == "unet"
    assert loaded.config.data["scale"] == "unit" and loaded.task.data_scale == "unit"
    assert loaded.task.scheduler.first_step == 1 and not loaded.task.scheduler.clip_sample
    for name in ("samples", "trajectory", "losses"):
        assert png_size(stored["plots"][name])[0] > 100
    width, height = png_size(out / "samples.png")
    assert width > 3 * height  # 2 rows of 10
    assert (loaded.checkpoint_path.parent.parent / "plots" / "samples.png").is_file()  # report
    printed = capsys.readouterr().out
    assert f"UNet parameters: {stored['parameters']:,}" in printed
    assert "20 samples with ddim (5 steps, eta 0)" in printed
    # the same trained network sampled again, with another sampler, without training
    again = step09.sample_run(
        stored["run_dir"], tmp_path / "again", options_for(tmp_path, mnist_root, sample_steps=3)
    )
    assert again["sampler"] == "ddim (3 steps, eta 0)" and again["trajectory_steps"][-1] == 333
    assert again["parameters"] == stored["parameters"]
    assert json.loads((tmp_path / "again" / "results.json").read_text())["sample_steps"] == 3
    assert png_size(tmp_path / "again" / "samples.png") == (width, height)


def test_step09_sampler_choice_and_trajectory_columns():
    """No --sample-steps (or 1000): the book's DDPM over every step; K: DDIM with K steps on the
    schedule the network was trained with. The trajectory shows 10 of the visited steps, from
    the first to t=0."""
    trained = DDPMScheduler()
    ddpm = step09.make_sampler(trained, None)
    assert type(ddpm) is DDPMScheduler and ddpm.timesteps == list(range(999, -1, -1))
    assert type(step09.make_sampler(trained, 1000)) is DDPMScheduler
    ddim = step09.make_sampler(DDPMScheduler(beta_end=0.03), 50)
    assert isinstance(ddim, DDIMScheduler) and ddim.timesteps[:2] == [999, 979]
    assert float(ddim.betas[-1]) == pytest.approx(0.03)
    columns = step09.trajectory_steps(ddpm.timesteps)
    assert len(columns) == 10 and columns[0] == 999 and columns[-1] == 0
    assert columns == sorted(columns, reverse=True)
    assert step09.trajectory_steps(list(range(80, -1, -20))) == [80, 60, 40, 20, 0]


def test_step10_drops_labels_guides_and_judges(
    tmp_path, mnist_root, brief_judge, capsys, monkeypatch
):
    path, record = brief_judge
    judge_args = {"path": path, "min_accuracy": 0.5}
    out = tmp_path / "out"
    out.mkdir()
    judged = []  # what the (real) judge is shown

    def judge(images, labels, options, **kwargs):
        judged.append((images.clone(), labels.clone()))
        return real_judge(images, labels, options, **kwargs)

    real_judge = step10.judge
    monkeypatch.setattr(step10, "judge", judge)
    options = options_for(tmp_path, mnist_root, guidance=2.5)
    results = step10.run(out, None, options, judge_args, **NARROW)
    stored = json.loads((out / "results.json").read_text())
    assert stored["guidance"] == 2.5 and stored["p_uncond"] == 0.1
    assert len(stored["losses"]) == 1 and 0.6 < stored["losses"][0] < 1.3
    loaded = load_run(stored["run_dir"])
    assert loaded.config.model == "unet-conditional" and loaded.model.null_label == 10
    assert loaded.task.p_uncond == 0.1
    for key in ("judged_guided", "judged_conditional"):
        verdict = stored[key]
        assert sorted(verdict["per_digit"]) == [str(d) for d in range(10)]
        assert 0.0 <= verdict["overall"] <= 1.0
        per_digit = sum(verdict["per_digit"].values()) / 10  # 10 samples of every digit
        assert math.isclose(per_digit, verdict["overall"], abs_tol=1e-6)
        assert verdict["judge_test_acc"] == record["test_accuracy"]
    for name in ("guided", "conditional"):
        width, height = png_size(stored["plots"][name])
        assert 0.7 < width / height < 1.4  # 10 x 10
    assert results["sampling_seconds"]["guided"] > 0
    # guided and plain samples of rows of digits 0..9, from the same starting noise
    (guided, asked), (plain, asked_plain) = judged
    assert torch.equal(asked, torch.arange(10).repeat_interleave(10))
    assert torch.equal(asked_plain, asked)
    assert guided.shape == (100, 1, 28, 28) and guided.min() >= 0.0 and guided.max() <= 1.0
    assert loaded.config.recipe == "mnist-cfg-book" and loaded.task.scheduler.first_step == 1
    assert (guided - plain).abs().mean() > 1e-3
    printed = capsys.readouterr().out
    assert "judged as the digit asked for, guidance 2.5:" in printed
    # judged again from the trained run at guidance 1: the guided samples are the plain ones
    again = step10.judge_run(
        stored["run_dir"],
        tmp_path / "w1",
        options_for(tmp_path, mnist_root, guidance=1.0),
        judge_args,
    )
    assert again["judged_guided"] == again["judged_conditional"] == stored["judged_conditional"]
    assert torch.equal(judged[2][0], judged[1][0])
    with pytest.raises(ConfigError, match="a classification run, not a diffusion one"):
        step09.trained_run(record["run_dir"])


def test_recipes_train_from_the_command_line(tmp_path, mnist_root, capsys):
    """`mlenv train mnist-cfg` with the task's flags: a run whose summary has a test loss and
    the sample grid the task's report draws."""
    code = main(
        [
            "train",
            "mnist-cfg",
            "--root",
            str(mnist_root),
            "--limit",
            "128",
            "--epochs",
            "1",
            "--channels",
            "[4, 8, 8]",
            "--time_dim",
            "8",
            "--p_uncond",
            "0.2",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--runs_dir",
            str(tmp_path / "runs"),
            "--progress",
            "false",
        ]
    )
    assert code == 0
    (run_dir,) = (tmp_path / "runs" / "mnist-cfg").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and math.isfinite(summary["test_loss"])
    assert png_size(summary["samples"])[0] > 100
    assert load_run(run_dir).task.p_uncond == 0.2
    capsys.readouterr()


def test_step10_refuses_a_missing_judge_or_guidance_before_training(
    tmp_path, mnist_root, monkeypatch, capsys
):
    """A judge that cannot be had is an error before the training (review finding: it came
    after the whole run); a guidance that is not a finite scale >= 0 is refused at once."""
    from mlenv.errors import MlenvError

    monkeypatch.setenv("MLENV_JUDGE", str(tmp_path / "no-judge.safetensors"))
    with pytest.raises(MlenvError, match="no judge there"):
        step10.run(tmp_path / "out", None, options_for(tmp_path, mnist_root))
    assert not (tmp_path / "runs").exists()  # nothing trained
    for bad in ("nan", "inf", "-1"):
        assert main(["book", "step10", "--guidance", bad, "--out", str(tmp_path / bad)]) == 2
        assert "--guidance: accepts a scale >= 0" in capsys.readouterr().err


def test_step09_draws_pictures_in_zero_one_from_either_data_range():
    """draw_samples hands out [0, 1] pixels whatever range the network samples in: the [-1, 1]
    form's raw samples (negative here) mapped by (x + 1) / 2, the book's [0, 1] ones as they are;
    the trajectory too."""
    from types import SimpleNamespace

    from torch import nn

    from mlenv.models.diffusion import sample

    class Zero(nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    loaded = SimpleNamespace(
        model=Zero(), config=SimpleNamespace(train=SimpleNamespace(precision="32"))
    )
    options = BookOptions(device="cpu", seed=3)
    for data_range in ((-1.0, 1.0), (0.0, 1.0)):
        scheduler = DDIMScheduler(data_range=data_range)
        scheduler.set_timesteps(2)
        first = scheduler.timesteps[0]
        images, path, _ = step09.draw_samples(loaded, scheduler, options, count=4, keep={first})
        raw = sample(Zero(), scheduler, (4, 1, 28, 28), generator=torch.Generator().manual_seed(3))
        low, high = data_range
        assert torch.allclose(images, ((raw - low) / (high - low)).clamp(0, 1))
        assert images.min() >= 0.0 and images.max() <= 1.0 and path[first].min() >= 0.0
        if low < 0:
            assert raw.min() < -0.5  # the mapping mattered
