"""`mlenv train` writes a complete run folder; `--fast-dev-run` writes nothing."""

from __future__ import annotations

import csv
import json

import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlenv.cli import main


def test_train_writes_the_run_folder(runs_dir, capsys):
    code = main(
        ["train", "digits-mlp", "--epochs", "3", "--runs_dir", str(runs_dir), "--progress", "false"]
    )
    out = capsys.readouterr().out
    assert code == 0
    (run,) = (runs_dir / "digits-mlp").iterdir()  # experiment defaults to the recipe's name
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["recipe"] == "digits-mlp" and config["epochs"] == 3
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and 0.8 < summary["test_acc"] <= 1.0
    assert summary["stop_reason"] == "completed 3 epochs"
    png = (run / "plots" / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "epoch/val_loss" in tags and "step/lr" in tags
    assert len(events.Scalars("epoch/val_loss")) == 3
    assert (run / "checkpoints" / "last.pt").is_file()
    from safetensors.torch import load_file

    weights = load_file(run / "model.safetensors")
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert weights.keys() == last.keys()
    assert all(torch.equal(weights[k], last[k]) for k in weights)
    assert "test_acc" in out and str(run) in out


def test_experiment_name_moves_the_run(runs_dir, capsys):
    assert (
        main(
            [
                "train",
                "digits-mlp",
                "--epochs",
                "1",
                "--runs_dir",
                str(runs_dir),
                "--experiment",
                "mine",
                "--progress",
                "false",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in runs_dir.iterdir()) == ["mine", "mlenv.db"]


def test_fast_dev_run_writes_nothing(runs_dir, capsys):
    code = main(["train", "digits-mlp", "--fast_dev_run", "true", "--runs_dir", str(runs_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert not runs_dir.exists()
    assert "fast_dev_run" in out and "nothing written" in out


def test_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--epochs", "2", "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "loss curve:" in out
    assert list((tmp_path / "runs" / "demo").glob("*/plots/loss_curve.png"))


def test_a_nan_loss_stops_the_run_and_summary_says_why(runs_dir, capsys):
    code = main(
        [
            "train",
            "digits-mlp",
            "--epochs",
            "3",
            "--lr",
            "1e12",
            "--optimizer",
            "sgd",
            "--runs_dir",
            str(runs_dir),
            "--progress",
            "false",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "non-finite loss at epoch" in err and "first non-finite output" in err
    (summary_file,) = runs_dir.glob("digits-mlp/*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["status"] == "failed" and "non-finite loss" in summary["stop_reason"]


def test_resume_last_continues_the_newest_run(runs_dir, capsys):
    base = ["train", "digits-mlp", "--runs_dir", str(runs_dir), "--progress", "false"]
    assert main([*base, "--epochs", "2"]) == 0
    assert main([*base, "--epochs", "4", "--resume", "last"]) == 0
    (run,) = (runs_dir / "digits-mlp").iterdir()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
