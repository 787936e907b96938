"""Checkpoints: exact resume after SIGKILL and SIGTERM, bad files, compiled models, top-k."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlenv.cli import main
from mlenv.config import TrainConfig
from mlenv.data import DATASETS
from mlenv.models import create_model
from mlenv.track.run import Run
from mlenv.train.callbacks import EarlyStopping, TopKCheckpoints
from mlenv.train.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from mlenv.train.tasks import ClassificationTask
from mlenv.train.trainer import Trainer

MLENV = [sys.executable, "-m", "mlenv.cli"]
# dropout makes the result depend on the restored RNG state, not only on the weights
TRAIN = [
    "train",
    "digits-mlp",
    "--deterministic",
    "true",
    "--dropout",
    "0.1",
    "--epochs",
    "60",
    "--save_every",
    "1000",
    "--save_every_steps",
    "7",
    "--progress",
    "false",
    "--seed",
    "5",
]


def start(runs_dir: Path, experiment: str) -> subprocess.Popen:
    argv = [*MLENV, *TRAIN, "--runs_dir", str(runs_dir), "--experiment", experiment]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def only_run(runs_dir: Path, experiment: str) -> Path:
    (run,) = (runs_dir / experiment).iterdir()
    return run


def wait_for_step_checkpoint(runs_dir: Path, experiment: str, proc: subprocess.Popen) -> Path:
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list((runs_dir / experiment).glob("*/checkpoints/last.pt"))
        if found:
            time.sleep(0.3)  # let it train a little further, past the first checkpoint
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def metrics_without_time(run: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    proc = start(runs, "whole")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return only_run(runs, "whole")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_mid_epoch_then_resumed_is_bit_identical(uninterrupted, tmp_path, sig):
    proc = start(tmp_path, "killed")
    wait_for_step_checkpoint(tmp_path, "killed", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    run = only_run(tmp_path, "killed")
    position = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # SIGTERM: the run saved a checkpoint at the step it was on, and said so
        assert proc.returncode == 130, err
        assert "stopped by SIGTERM" in err and "checkpoint saved to" in err
    assert position["epoch"] < 59
    resumed = subprocess.run(
        [*MLENV, "train", "--resume-run", str(run)], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    # it started at the checkpoint, not from scratch: it says where, and ran only what was left
    step = position["global_step"]
    assert f"(optimizer step {step})" in resumed.stdout, resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    a = load_checkpoint(uninterrupted / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert summary["steps_run"] == a["state"]["global_step"] - step
    keys = ("epoch", "batch_in_epoch", "global_step")
    assert [a["state"][k] for k in keys] == [b["state"][k] for k in keys]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert metrics_without_time(uninterrupted) == metrics_without_time(run)


def test_resume_mid_epoch_checkpoint_position(uninterrupted):
    """At least the step checkpoints of that run are mid-epoch: 40 batches, saved every 7 steps."""
    state = load_checkpoint(uninterrupted / "checkpoints" / "last.pt")
    assert state["format_version"] == 2
    assert set(state) >= {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "state",
        "grads",
        "config",
        "extra",
    }
    assert set(state["state"]) >= {"epoch", "batch_in_epoch", "global_step", "sums", "history"}
    assert state["config"]["recipe"]["name"] == "digits-mlp"


# ----------------------------------------------------------------------------------------------
# bad checkpoints: one line naming the file and the problem, exit 2, nothing touched


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert (
        main(
            ["train", "digits-mlp", "--epochs", "2", "--runs_dir", str(runs), "--progress", "false"]
        )
        == 0
    )
    return only_run(runs, "digits-mlp")


def folder_state(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def test_error_cases(trained_run, tmp_path, capsys):
    last = trained_run / "checkpoints" / "last.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(last.read_bytes()[:3000])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    newer = tmp_path / "newer.pt"
    state = torch.load(last, weights_only=True)
    torch.save({**state, "format_version": 99}, newer)
    digest = state.pop("sha256")
    code_inside = tmp_path / "code.pt"
    torch.save({"model": {}, "format_version": 2, "payload": Path("x")}, code_inside)
    text = tmp_path / "notes.pt"
    text.write_text("epoch 3: loss 0.21\n" * 20)
    no_config = tmp_path / "no_config.pt"
    torch.save({"model": state["model"], "format_version": 2}, no_config)
    tampered = tmp_path / "tampered.pt"  # a weight changed after the digest was taken
    first = next(iter(state["model"]))
    edited = {**state["model"], first: state["model"][first].clone()}
    edited[first].view(-1)[0] += 1e-3
    torch.save({**state, "model": edited, "sha256": digest}, tampered)
    flipped = tmp_path / "flipped.pt"  # one bit of a weight flipped in the file's bytes
    raw = bytearray(last.read_bytes())
    weight_bytes = state["model"][first].numpy().tobytes()
    at = bytes(raw).find(weight_bytes[:64])
    assert at > 0
    raw[at + 10] ^= 0x04
    flipped.write_bytes(bytes(raw))
    cases = [
        (["--weights", str(truncated)], f"{truncated}: corrupt or truncated checkpoint"),
        (["--weights", str(empty)], f"{empty}: the file is empty (truncated checkpoint)"),
        (["--weights", str(garbage)], f"{garbage}: corrupt or truncated checkpoint"),
        (["--weights", str(newer)], f"{newer}: checkpoint format version 99 is newer"),
        (["--weights", str(code_inside)], f"{code_inside}: refused to load"),
        (["--weights", str(text)], f"{text}: corrupt or truncated checkpoint"),
        (["--weights", str(no_config)], f"{no_config}: not an mlenv checkpoint"),
        (["--weights", str(tampered)], f"{tampered}: integrity check failed"),
        (["--weights", str(flipped)], f"{flipped}: integrity check failed"),
        (["--weights", str(tmp_path / "nope.pt")], "nope.pt: no such checkpoint file"),
        (
            ["--weights", str(last), "--hidden", "64,64"],
            "layer net.0.weight has shape [128, 64], the model expects [64, 64]",
        ),
        (
            ["--weights", str(last), "--hidden", "128,64,32"],
            "does not fit the model: missing keys: net.6.weight, net.6.bias",
        ),
        (
            ["--weights", str(last), "--hidden", "128"],
            "does not fit the model: unexpected keys: net.4.weight, net.4.bias",
        ),
    ]
    before = folder_state(trained_run)
    for argv, expected in cases:
        assert main(["test", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert expected in err, (argv, err)
        assert err.count("\n") == 1, err  # one line
    assert folder_state(trained_run) == before


def test_resume_run_with_truncated_checkpoint_touches_nothing(trained_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    last = copy / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    before = folder_state(copy)
    assert main(["train", "--resume-run", str(copy), "--progress", "false"]) == 2
    assert "corrupt or truncated checkpoint" in capsys.readouterr().err
    assert folder_state(copy) == before


def test_test_command_reproduces_the_run_metrics(trained_run, capsys):
    import json

    summary = json.loads((trained_run / "summary.json").read_text())
    assert main(["test", "--weights", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert f"test_acc    {summary['test_acc']:.4f}" in out


# ----------------------------------------------------------------------------------------------


def test_compiled_model_checkpoint_loads_into_plain_model(tmp_path):
    data = DATASETS.create("digits", seed=0)
    run = Run(tmp_path / "run")
    model = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    config = TrainConfig(epochs=1, compile=True, progress=False, threads=1)
    trainer = Trainer(config, model, task=ClassificationTask(), run=run)
    trainer.fit(data.train, data.val)
    state = load_checkpoint(run.checkpoints / "last.pt")
    assert not any(
        k.startswith("_orig_mod.")
        for k in torch.load(run.checkpoints / "last.pt", weights_only=True)["model"]
    )
    plain = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    load_model_state(plain, state["model"], "last.pt")
    x = data.test[0]
    assert torch.allclose(plain(x), model(x), atol=1e-6)
    # a checkpoint written by other tools with the prefix loads too
    prefixed = {f"_orig_mod.{k}": v for k, v in state["model"].items()}
    other = create_model("mlp", seed=0, in_features=64, hidden=[32], out_features=10)
    save_checkpoint(tmp_path / "prefixed.pt", {"model": prefixed, "config": {}, "state": {}})
    load_model_state(other, load_checkpoint(tmp_path / "prefixed.pt")["model"], "prefixed.pt")
    assert torch.equal(other(x), plain(x))


def test_top_k_keeps_the_best_and_never_deletes_it(tmp_path):
    top = TopKCheckpoints(tmp_path, k=2, monitor="val_loss", mode="min")
    for epoch, value in enumerate([5.0, 3.0, 4.0, 1.0, 2.0, 6.0, 1.5], start=1):
        top.offer(epoch, value, f"epoch {epoch}".encode())
        files = {p.name for p in tmp_path.glob("epoch=*.pt")}
        best_value = min(v for v, _ in top.kept)
        assert any(f"val_loss={best_value:.6g}" in f for f in files)
    assert files == {"epoch=0004-val_loss=1.pt", "epoch=0007-val_loss=1.5.pt"}
    assert (tmp_path / "best.pt").read_bytes() == b"epoch 4"
    maxed = TopKCheckpoints(tmp_path / "max", k=1, monitor="val_acc", mode="max")
    for epoch, value in enumerate([0.5, 0.9, 0.7], start=1):
        maxed.offer(epoch, value, f"{epoch}".encode())
    assert {p.name for p in (tmp_path / "max").glob("epoch=*")} == {"epoch=0002-val_acc=0.9.pt"}


def test_early_stopping_on_a_known_sequence():
    stopper = EarlyStopping(patience=2, mode="min", min_delta=0.01)
    sequence = [1.0, 0.8, 0.795, 0.79, 0.85]
    reasons = [stopper.update(v) for v in sequence]
    # 0.795 and 0.79 do not beat 0.8 by more than 0.01: the second such epoch stops the run
    # (Keras and Lightning: stop after exactly `patience` epochs without improvement)
    assert reasons[:3] == [None, None, None]
    assert reasons[3] == "no improvement in val_loss for 2 epochs (best 0.8 at epoch 2)"
    maxed = EarlyStopping(patience=1, mode="max", monitor="val_acc")
    assert [maxed.update(v) for v in (0.5, 0.6, 0.6)] == [
        None,
        None,
        "no improvement in val_acc for 1 epochs (best 0.6 at epoch 2)",
    ]


def test_early_stopping_in_a_run_is_reported_in_summary(tmp_path, capsys):
    import json

    code = main(
        [
            "train",
            "digits-mlp",
            "--epochs",
            "50",
            "--early_stopping",
            "true",
            "--patience",
            "1",
            "--monitor",
            "val_acc",
            "--mode",
            "max",
            "--lr",
            "0.01",
            "--runs_dir",
            str(tmp_path),
            "--progress",
            "false",
        ]
    )
    assert code == 0
    summary = json.loads(next(tmp_path.glob("*/*/summary.json")).read_text())
    assert summary["stop_reason"].startswith("no improvement in val_acc for 1 epochs")
    assert summary["epochs"] < 50
