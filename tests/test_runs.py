"""`mlenv train` writes a complete run folder; `--fast-dev-run` writes nothing."""

from __future__ import annotations

import csv
import json
import os

import pytest
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
    assert config["recipe"]["name"] == "digits-mlp" and config["epochs"] == 3
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


# -- `mlenv runs show/delete`: which run, and never a folder that is not provably its own --------
def record(store_path, run_id, folder, *, running=False, run_dir=None, names=None):
    """A run in the store with its folder: ``summary.json`` naming ``names`` (default the run)."""
    from mlenv.track.store import Store

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("recipe: digits-mlp\n")
    if names is not False:
        summary = {"run_id": names or run_id, "status": "running" if running else "finished"}
        (folder / "summary.json").write_text(json.dumps(summary))
    store = Store(store_path)
    store.start_run(run_id, "exp", {}, run_dir=str(folder))
    if run_dir is not None:  # as an older mlenv recorded it
        with store.transaction() as db:
            db.execute("UPDATE runs SET run_dir = ? WHERE id = ?", (run_dir, run_id))
    if not running:
        store.finish_run(run_id, "finished", {"test_acc": 0.9})
    store.close()
    return folder


def files(folder):
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def store_with_runs(tmp_path):
    db = tmp_path / "runs" / "mlenv.db"
    for run_id in ("20261122-070000-c978ac", "20261122-070000-c978bd", "20261122-080000-aaaaaa"):
        record(db, run_id, tmp_path / "runs" / "exp" / run_id)
    return db


def test_delete_needs_the_id_or_a_6_character_prefix(store_with_runs, tmp_path, capsys):
    from mlenv.track.store import Store

    store = ["--store", str(store_with_runs)]
    before = files(tmp_path / "runs" / "exp")
    assert main(["runs", "delete", "c", "--yes", *store]) == 2  # once deleted ...-c978ac
    assert "at least 6 characters" in capsys.readouterr().err
    assert main(["runs", "delete", "c978ac", "--yes", *store]) == 2  # a suffix is no prefix
    assert "no run 'c978ac'" in capsys.readouterr().err
    assert main(["runs", "delete", "20261122-07", "--yes", *store]) == 2
    err = capsys.readouterr().err
    assert "matches 2 runs" in err and "c978ac" in err and "c978bd" in err
    assert len(err.strip().splitlines()) == 1
    assert files(tmp_path / "runs" / "exp") == before
    assert len(Store(store_with_runs).runs()) == 3

    assert main(["runs", "show", "20261122-08", *store]) == 0
    assert "run 20261122-080000-aaaaaa" in capsys.readouterr().out
    assert main(["runs", "delete", "20261122-08", "--yes", *store]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "runs" / "exp" / "20261122-080000-aaaaaa"
    assert "experiment exp" in out and f"folder     {folder}" in out and "finished" in out
    assert not folder.exists()
    assert [r["id"] for r in Store(store_with_runs).runs()] == [
        "20261122-070000-c978ac",
        "20261122-070000-c978bd",
    ]


def test_delete_keeps_a_folder_that_is_not_the_runs(tmp_path, capsys):
    from mlenv.track.store import Store

    db = tmp_path / "mlenv.db"
    other = record(db, "20261122-090000-000001", tmp_path / "a", names="someone-else")
    bare = record(db, "20261122-090000-000002", tmp_path / "b", names=False)
    before = files(tmp_path / "a") | files(tmp_path / "b")
    for run_id, why in (
        ("20261122-090000-000001", "is run 'someone-else'"),
        ("20261122-090000-000002", "no readable summary.json"),
    ):
        assert main(["runs", "delete", run_id, "--yes", "--force", "--store", str(db)]) == 2
        err = capsys.readouterr().err
        assert why in err and "not deleting" in err
    assert files(tmp_path / "a") | files(tmp_path / "b") == before
    assert other.is_dir() and bare.is_dir() and len(Store(db).runs()) == 2


def test_delete_refuses_a_live_run_unless_forced(tmp_path, capsys):
    db = tmp_path / "mlenv.db"
    folder = record(db, "20261122-100000-0000aa", tmp_path / "live", running=True)
    argv = ["runs", "delete", "20261122-100000-0000aa", "--yes", "--store", str(db)]
    assert main(argv) == 2  # this process recorded it: alive
    err = capsys.readouterr().err
    assert "is running" in err and f"process {os.getpid()}" in err and "--force" in err
    assert folder.is_dir()
    assert main([*argv, "--force"]) == 0
    assert not folder.exists()


def test_delete_reads_an_older_relative_folder_beside_the_store(tmp_path, monkeypatch, capsys):
    """Older rows hold ``runs/<experiment>/<id>`` relative to where training ran: read beside
    the store, never relative to the current folder (which holds a decoy of the same name)."""
    run_id = "20261122-110000-0000bb"
    db = tmp_path / "project" / "runs" / "mlenv.db"
    real = record(
        db, run_id, tmp_path / "project" / "runs" / "exp" / run_id, run_dir=f"runs/exp/{run_id}"
    )
    elsewhere = tmp_path / "elsewhere"
    decoy = elsewhere / "runs" / "exp" / run_id
    decoy.mkdir(parents=True)
    (decoy / "summary.json").write_text(json.dumps({"run_id": run_id}))
    monkeypatch.chdir(elsewhere)
    assert main(["runs", "delete", run_id, "--yes", "--store", str(db)]) == 0
    assert f"folder     {real}" in capsys.readouterr().out
    assert not real.exists() and (decoy / "summary.json").is_file()


def test_delete_of_a_run_whose_folder_is_gone_forgets_it(tmp_path, capsys):
    import shutil

    from mlenv.track.store import Store

    db = tmp_path / "mlenv.db"
    shutil.rmtree(record(db, "20261122-120000-0000cc", tmp_path / "gone"))
    assert main(["runs", "delete", "20261122-120000-0000cc", "--yes", "--store", str(db)]) == 0
    assert "not there" in capsys.readouterr().out
    assert Store(db).runs() == []


def test_delete_with_stdin_closed_deletes_nothing(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "mlenv.db"
    folder = record(db, "20261122-130000-0000dd", tmp_path / "kept")
    before = files(folder)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlenv.cli",
            "runs",
            "delete",
            "20261122-130000",
            "--store",
            str(db),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "mlenv: nothing deleted (no answer: stdin is closed; pass --yes)"
    ]
    assert "20261122-130000-0000dd" in proc.stdout and str(folder) in proc.stdout
    assert files(folder) == before


def test_a_short_prefix_matching_one_run_is_still_refused(tmp_path, capsys):
    db = tmp_path / "mlenv.db"
    folder = record(db, "20261122-140000-0000ee", tmp_path / "only")
    before = files(folder)
    for argv in (["show", "20261"], ["delete", "20261", "--yes"]):
        assert main(["runs", *argv, "--store", str(db)]) == 2
        assert "at least 6 characters" in capsys.readouterr().err
    assert files(folder) == before
