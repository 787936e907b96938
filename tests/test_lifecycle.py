"""One run lifecycle (RunSession): store rows, TensorBoard, files, locks and statuses across
resumes; model selection (monitor, mode, test-on); what is logged per optimizer step."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlenv.cli import main
from mlenv.track.store import Store

QUIET = ["--progress", "false", "--threads", "1"]


def train(runs: Path, *argv: str) -> int:
    return main(["train", *argv, "--runs-dir", str(runs), *QUIET])


def runs_of(runs: Path, experiment: str) -> list[Path]:
    folder = runs / experiment
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def metric_rows(store: Path, run_id: str) -> list[tuple[int, str, float]]:
    db = sqlite3.connect(store)
    try:
        return db.execute(
            "SELECT step, name, value FROM metrics WHERE run_id = ? ORDER BY step, name", (run_id,)
        ).fetchall()
    finally:
        db.close()


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """What TensorBoard shows for ``tag`` (purged events dropped, as TensorBoard drops them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# ----------------------------------------------------------------------------------------------
# Resume keeps the store and the logs true


def test_resume_from_an_older_checkpoint_overwrites_replayed_rows_and_keeps_group(tmp_path):
    runs = tmp_path / "runs"
    db = runs / "mlenv.db"
    runs.mkdir()
    store = Store(db)
    group = store.create_group("g", "repeat", "digits-mlp", {"seeds": [0, 1]})
    store.close()
    from mlenv.config import load_recipe, resolve
    from mlenv.train.run import run_recipe

    cfg = resolve(
        load_recipe("digits-mlp"),
        ["--epochs", "4", "--save-top-k", "4", "--runs-dir", str(runs), *QUIET],
    )
    result = run_recipe(cfg, group_id=group, member="seed=0")
    run = result.run_dir
    before = Store(db).run(run.name)
    epoch2 = next(run.glob("checkpoints/epoch=0002-*.pt"))
    # resume from epoch 2 of 4: epochs 3 and 4 are trained (and logged) a second time
    assert train(runs, "--resume-run", str(run), "--resume", str(epoch2)) == 0
    after = Store(db).run(run.name)
    assert (after["group_id"], after["member"], after["start"]) == (
        group,
        "seed=0",
        before["start"],
    )
    assert after["status"] == "finished"
    rows = metric_rows(db, run.name)
    keys = [(step, name) for step, name, _ in rows]
    assert len(keys) == len(set(keys))  # no duplicated (step, name)
    assert [s for s, n, _ in rows if n == "val_loss"] == [1, 2, 3, 4]
    steps = [s for s, n, _ in rows if n == "step/loss"]
    assert steps == list(range(1, 161))  # 40 optimizer steps per epoch, each once
    tb = scalars(run, "epoch/val_loss")
    assert [s for s, _ in tb] == [40, 80, 120, 160]  # purged at the resumed step, then re-logged
    assert [v for _, v in tb] == pytest.approx([v for s, n, v in rows if n == "val_loss"])
    # compare sees the group intact: the member is still there
    assert Store(db).runs(group_id=group)[0]["member"] == "seed=0"


def test_failed_resume_leaves_a_finished_run_untouched(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(runs, "digits-mlp", "--epochs", "2") == 0
    (run,) = runs_of(runs, "digits-mlp")
    store = runs / "mlenv.db"
    before = tree(run)
    cases = [
        (["--optimizer", "sgd", "--lr", "0.5"], "cannot change on resume: lr (0.001 -> 0.5)"),
        (["--batch-size", "64"], "cannot change on resume: batch_size (32 -> 64)"),
        ([], "has already trained 2 of 2 epochs; give --epochs N larger"),
    ]
    for argv, expected in cases:
        assert train(runs, "--resume-run", str(run), *argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
        assert tree(run) == before
        assert Store(store).run(run.name)["status"] == "finished"
    last = run / "checkpoints" / "last.pt"
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 2])  # truncated
    truncated = tree(run)
    assert train(runs, "--resume-run", str(run), "--epochs", "3") == 2
    assert "corrupt or truncated checkpoint" in capsys.readouterr().err
    assert tree(run) == truncated
    assert Store(store).run(run.name)["status"] == "finished"
    last.write_bytes(good)
    assert train(runs, "--resume-run", str(run), "--epochs", "3") == 0  # and it still resumes
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["epochs"], summary["run_id"]) == ("finished", 3, run.name)


def test_a_run_in_use_is_locked(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(runs, "digits-mlp", "--epochs", "1") == 0
    (run,) = runs_of(runs, "digits-mlp")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = run / "run.lock"
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        before = tree(run)
        assert train(runs, "--resume-run", str(run), "--epochs", "2") == 2
        err = capsys.readouterr().err
        assert f"is in use by process {holder.pid}" in err
        assert tree(run) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, and the resume takes it over (and removes it)
    assert train(runs, "--resume-run", str(run), "--epochs", "2") == 0
    assert not (run / "run.lock").exists()


def test_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        assert train(tmp_path / "a", "digits-mlp", "--epochs", "1") == 0
        os.umask(0o077)
        assert train(tmp_path / "b", "digits-mlp", "--epochs", "1") == 0
    finally:
        os.umask(old)
    for runs, mode in ((tmp_path / "a", 0o644), (tmp_path / "b", 0o600)):
        (run,) = runs_of(runs, "digits-mlp")
        for name in ("summary.json", "config.yaml", "metrics.csv", "checkpoints/last.pt"):
            assert stat.S_IMODE((run / name).stat().st_mode) == mode, (runs, name)


@pytest.mark.parametrize("experiment", ["../../x", "/tmp/abs", "a/b", ".."])
def test_experiment_stays_inside_runs_dir(tmp_path, capsys, experiment):
    assert train(tmp_path / "runs", "digits-mlp", "--experiment", experiment) == 2
    assert "experiment: accepts a folder name" in capsys.readouterr().err
    assert not any(tmp_path.parent.glob("x")) and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------------
# Model selection


def test_monitor_accuracy_infers_max_and_best_is_the_highest(tmp_path):
    runs = tmp_path / "runs"
    assert train(runs, "digits-mlp", "--epochs", "4", "--monitor", "val_acc", "--lr", "0.02") == 0
    (run,) = runs_of(runs, "digits-mlp")
    summary = json.loads((run / "summary.json").read_text())
    history = [r for r in metric_rows(runs / "mlenv.db", run.name) if r[1] == "val_acc"]
    best_epoch, best = max(((s, v) for s, _, v in history), key=lambda sv: (sv[1], -sv[0]))
    assert summary["best_val_acc"] == pytest.approx(best)
    assert summary["tested_on"] == f"best (val_acc, epoch {best_epoch})"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--monitor", "val_acc", "--mode", "min"], "mode: 'min' contradicts 'val_acc'"),
        (["--monitor", "val_accuracy_x"], "cannot tell whether a higher or a lower"),
        (["--monitor", "val_acc_typo", "--mode", "max"], "'val_acc_typo' is not a metric"),
        (["--monitor", "val_los"], "cannot tell whether"),
    ],
)
def test_a_monitor_that_cannot_apply_is_an_error_before_training(tmp_path, capsys, argv, expected):
    runs = tmp_path / "runs"
    assert train(runs, "digits-mlp", "--epochs", "1", *argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert runs_of(runs, "digits-mlp") == []  # nothing was created


def test_unknown_monitor_lists_the_metrics(tmp_path, capsys):
    assert train(tmp_path, "digits-mlp", "--monitor", "val_f1", "--mode", "max") == 2
    err = capsys.readouterr().err
    assert "'val_f1' is not a metric of this run; metrics:" in err
    assert "val_acc" in err and "val_loss" in err and "train_loss" in err


def test_test_on_best_and_last(tmp_path):
    runs = tmp_path / "runs"
    # a high lr makes the last epoch worse than the best one
    common = ["digits-mlp", "--epochs", "6", "--lr", "0.05", "--seed", "1"]
    assert train(runs, *common, "--experiment", "best") == 0
    assert train(runs, *common, "--experiment", "last", "--test-on", "last") == 0
    best = json.loads((runs_of(runs, "best")[0] / "summary.json").read_text())
    last = json.loads((runs_of(runs, "last")[0] / "summary.json").read_text())
    assert best["tested_on"].startswith("best (val_loss, epoch ")
    assert last["tested_on"] == "last (epoch 6)"
    best_epoch = int(best["tested_on"].rsplit(" ", 1)[1].rstrip(")"))
    if best_epoch != 6:  # then the tested weights differ, and so do the test numbers
        assert best["test_loss"] != last["test_loss"]
    # `mlenv test` on the run folder evaluates the weights the summary's numbers came from
    for summary, run in ((best, runs_of(runs, "best")[0]), (last, runs_of(runs, "last")[0])):
        metrics = _test(run)
        assert metrics == pytest.approx(summary["test_acc"], abs=1e-4)


def _test(run: Path) -> float:
    from mlenv.train.run import evaluate_run

    return evaluate_run(str(run))["test_acc"]


# ----------------------------------------------------------------------------------------------
# What is logged


def test_one_row_per_optimizer_step_with_the_lr_it_used(tmp_path):
    runs = tmp_path / "runs"
    argv = ["digits-mlp", "--epochs", "2", "--accumulate", "4", "--scheduler", "linear"]
    assert train(runs, *argv, "--warmup-steps", "5", "--grad-clip", "1.0") == 0
    (run,) = runs_of(runs, "digits-mlp")
    rows = metric_rows(runs / "mlenv.db", run.name)
    by_name: dict[str, list[tuple[int, float]]] = {}
    for step, name, value in rows:
        by_name.setdefault(name, []).append((step, value))
    steps_per_epoch = -(-40 // 4)  # 40 batches of 32 in groups of 4
    expected = list(range(1, 2 * steps_per_epoch + 1))
    for name in ("step/loss", "step/lr", "step/grad_norm"):
        assert [s for s, _ in by_name[name]] == expected, name
    # the first step trains at the warm-up's starting lr (0.1 x 0.001), not the next one
    assert by_name["step/lr"][0][1] == pytest.approx(1e-4)
    assert by_name["step/lr"][1][1] == pytest.approx(1e-4 + (1e-3 - 1e-4) / 5)
    assert all(v > 0 for _, v in by_name["step/grad_norm"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["parameters"] == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert summary["samples_per_s"] > 0
    assert summary["weights_sha256"] == _sha256(run / "model.safetensors")


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# A run from the user's own recipe file works everywhere


def test_run_from_a_users_recipe_file_is_self_contained(tmp_path, shared_data, capsys):
    from mlenv.config import RECIPE_DIR

    recipe = yaml.safe_load((RECIPE_DIR / "tabular-binary.yaml").read_text())
    recipe["description"] = "my own copy"
    mine = tmp_path / "my-recipe.yaml"
    mine.write_text(yaml.safe_dump(recipe))
    data = shared_data / "tabular" / "spambase.data"
    runs = tmp_path / "runs"
    argv = [str(mine), "--data", str(data), "--no-header", "--epochs", "2"]
    assert train(runs, *argv) == 0
    (run,) = runs_of(runs, "my-recipe")
    mine.unlink()  # the file is gone: the run must not need it
    shutil.copy(data, tmp_path / "new.csv")
    capsys.readouterr()
    assert main(["test", "--weights", str(run)]) == 0
    assert "test_acc" in capsys.readouterr().out
    out = tmp_path / "preds.csv"
    assert main(["predict", "--weights", str(run), "--data", str(data), "--out", str(out)]) == 0
    assert main(["export", "onnx", "--weights", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    assert train(runs, "--resume-run", str(run), "--epochs", "3") == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_test_reads_the_file_trained_on_and_warns_when_it_changed(
    tmp_path, shared_data, capsys, monkeypatch
):
    spam = shared_data / "tabular" / "spambase.data"
    magic = shared_data / "tabular" / "magic04.data"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(spam, tmp_path / "a" / "data.csv")
    shutil.copy(magic, tmp_path / "b" / "data.csv")  # same relative name, other data
    runs = tmp_path / "runs"
    monkeypatch.chdir(tmp_path / "a")
    argv = ["tabular-binary", "--data", "data.csv", "--no-header", "--epochs", "2"]
    assert train(runs, *argv) == 0
    (run,) = runs_of(runs, "tabular-binary")
    summary = json.loads((run / "summary.json").read_text())
    monkeypatch.chdir(tmp_path / "b")  # here, data.csv is magic04
    capsys.readouterr()
    assert main(["test", "--weights", str(run)]) == 0
    out, err = capsys.readouterr()
    assert f"test_acc        {summary['test_acc']:.4f}" in out and "warning" not in err
    with (tmp_path / "a" / "data.csv").open("a") as f:  # the trained-on file changes
        f.write(spam.read_text().splitlines()[0] + "\n")
    assert main(["test", "--weights", str(run)]) == 0
    err = capsys.readouterr().err
    assert "mlenv: warning:" in err and "is not the file the model was trained on" in err
    assert main(["test", "--weights", str(run), "--data", "data.csv"]) == 2  # magic04: 10 columns
    err = capsys.readouterr().err
    assert "has 10 feature columns; the model was trained on 57" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("runs-dir-is-file", "--runs-dir: {p} exists and is not a folder"),
        ("runs-dir-in-run", "is inside the run folder"),
        ("store-is-folder", "--store: {p} is a folder"),
        ("store-not-sqlite", "--store: {p} cannot be used as the experiment store"),
    ],
)
def test_bad_runs_dir_or_store_is_one_line_and_creates_nothing(tmp_path, capsys, where, expected):
    runs = tmp_path / "runs"
    argv = ["digits-mlp", "--epochs", "1"]
    if where == "runs-dir-is-file":
        runs.write_text("not a folder\n")
        target = runs
    elif where == "runs-dir-in-run":
        assert train(runs, *argv) == 0
        (run,) = runs_of(runs, "digits-mlp")
        target = run / "plots"
        runs = target
    elif where == "store-is-folder":
        target = tmp_path / "store"
        target.mkdir()
        argv += ["--store", str(target)]
    else:
        target = tmp_path / "store.db"
        target.write_text("this is text, not SQLite\n" * 100)
        argv += ["--store", str(target)]
    before = tree(tmp_path)
    capsys.readouterr()
    assert train(runs, *argv) == 2
    err = capsys.readouterr().err
    assert expected.format(p=target) in err and err.count("\n") == 1, err
    assert tree(tmp_path) == before


class _RecordingTracker:
    """A tracker that records whether it was closed (what W&B/MLflow writers must be)."""

    def __init__(self) -> None:
        self.closed = False

    def log(self, values, step) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("error", "status"),
    [(None, "finished"), (RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")],
)
def test_session_closes_everything_and_records_the_status(tmp_path, error, status):
    from mlenv.track.run import Run
    from mlenv.track.session import RunSession

    store = Store(tmp_path / "mlenv.db")
    run = Run.plan(tmp_path, "exp")
    tracker = _RecordingTracker()
    session = RunSession(run, store, experiment="exp", config={"a": 1}, trackers=[tracker])
    with pytest.raises(type(error)) if error else _nothing(), session:
        run.log_epoch({"val_loss": 0.5}, 1, 10)  # opens the TensorBoard writer
        assert (run.path / "run.lock").is_file()
        if error:
            raise error
        session.finish({"val_loss": 0.5})
    assert tracker.closed and run._writer is None
    assert not (run.path / "run.lock").exists()
    summary = json.loads((run.path / "summary.json").read_text())
    assert (summary["run_id"], summary["status"]) == (run.id, status)
    assert store.run(run.id)["status"] == status
    if error is not None:
        assert "boom" in summary["stop_reason"] or status == "interrupted"


def _nothing():
    import contextlib

    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# Resume from anywhere continues the same run, with the same data and the same store


def test_resume_from_another_folder_uses_the_runs_data_store_and_folder(
    tmp_path, shared_data, capsys, monkeypatch
):
    spam = shared_data / "tabular" / "spambase.data"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    shutil.copy(spam, tmp_path / "a" / "data.csv")
    shutil.copy(shared_data / "tabular" / "magic04.data", tmp_path / "b" / "data.csv")
    monkeypatch.chdir(tmp_path / "a")
    argv = ["tabular-binary", "--data", "data.csv", "--no-header", "--epochs", "2"]
    assert main(["train", *argv, *QUIET]) == 0  # runs/ relative to a/
    (run,) = runs_of(tmp_path / "a" / "runs", "tabular-binary")
    monkeypatch.chdir(tmp_path / "b")  # here data.csv is another file, and there is no runs/
    assert main(["train", "--resume-run", str(run), "--epochs", "3", *QUIET]) == 0
    assert not (tmp_path / "b" / "runs").exists()  # the run's own store was used
    row = Store(tmp_path / "a" / "runs" / "mlenv.db").run(run.name)
    assert row["status"] == "finished"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["sizes"] == {"train": 3220, "val": 460, "test": 921}  # spambase
    # the trained-on file changes: resuming would silently train on other rows
    with (tmp_path / "a" / "data.csv").open("a") as f:
        f.write(spam.read_text().splitlines()[0] + "\n")
    capsys.readouterr()
    before = tree(run)
    assert main(["train", "--resume-run", str(run), "--epochs", "4", *QUIET]) == 2
    err = capsys.readouterr().err
    assert "resume:" in err and "is not the file the model was trained on" in err
    assert tree(run) == before


def test_resume_takes_only_a_checkpoint_of_that_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(runs, "digits-mlp", "--epochs", "2", "--experiment", "x") == 0
    assert train(runs, "digits-mlp", "--epochs", "2", "--experiment", "y") == 0
    (x,), (y,) = runs_of(runs, "x"), runs_of(runs, "y")
    before = tree(x)
    y_ckpt = str(y / "checkpoints" / "last.pt")
    assert train(runs, "--resume-run", str(x), "--resume", y_ckpt, "--epochs", "3") == 2
    assert "is not a checkpoint of the run" in capsys.readouterr().err
    assert tree(x) == before
    loose = tmp_path / "loose.pt"
    shutil.copy(y_ckpt, loose)
    assert train(runs, "digits-mlp", "--resume", str(loose), "--epochs", "3") == 2
    assert "is not in a run folder's checkpoints/" in capsys.readouterr().err
    # a run's own checkpoint by path continues that run (no new folder)
    assert train(runs, "digits-mlp", "--experiment", "y", "--resume", y_ckpt, "--epochs", "3") == 0
    assert runs_of(runs, "y") == [y]
    assert json.loads((y / "summary.json").read_text())["epochs"] == 3


def test_a_run_interrupted_after_its_last_epoch_resumes_to_its_summary(tmp_path):
    runs = tmp_path / "runs"
    assert train(runs, "digits-mlp", "--epochs", "2") == 0
    (run,) = runs_of(runs, "digits-mlp")
    done = json.loads((run / "summary.json").read_text())
    # what SIGTERM during the test evaluation leaves: trained, but no summary
    (run / "summary.json").write_text(json.dumps({"run_id": run.name, "status": "interrupted"}))
    (run / "model.safetensors").unlink()
    assert train(runs, "--resume-run", str(run)) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps_run"] == 0
    assert summary["test_acc"] == done["test_acc"] and (run / "model.safetensors").is_file()


def test_sigterm_outside_the_loop_is_an_interrupt():
    import signal

    from mlenv.train.run import sigterm_as_interrupt

    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        import time

        time.sleep(5)  # the signal arrives before this ends


def test_a_diverged_run_is_not_recorded_as_finished(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(runs, "digits-mlp", "--epochs", "2", "--divergence-threshold", "0.0001") == 0
    (run,) = runs_of(runs, "digits-mlp")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["stop_reason"].startswith("diverged")
    assert Store(runs / "mlenv.db").run(run.name)["status"] == "diverged"


def test_a_resumed_run_drops_its_old_results_until_it_ends_again(tmp_path):
    from mlenv.track.run import Run
    from mlenv.track.session import RunSession

    runs = tmp_path / "runs"
    assert train(runs, "digits-mlp", "--epochs", "2") == 0
    (run_dir,) = runs_of(runs, "digits-mlp")
    store = Store(runs / "mlenv.db")
    assert "test_acc" in store.run(run_dir.name)["summary"]
    session = RunSession(Run(run_dir), store, experiment="digits-mlp", config={}, resumed=(2, 80))
    with pytest.raises(RuntimeError), session:
        raise RuntimeError("the resumed training failed")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "test_acc" not in summary
    assert store.run(run_dir.name)["summary"] == {}


def test_an_early_stopped_run_resumes_only_with_more_patience(tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["digits-mlp", "--epochs", "60", "--early-stopping", "--patience", "1", "--lr", "0.05"]
    assert train(runs, *argv) == 0
    (run,) = runs_of(runs, "digits-mlp")
    stopped = json.loads((run / "summary.json").read_text())
    assert stopped["epochs"] < 60
    before = tree(run)
    assert train(runs, "--resume-run", str(run)) == 2
    assert "the run stopped early (no improvement" in capsys.readouterr().err
    assert tree(run) == before
    assert train(runs, "--resume-run", str(run), "--patience", "3") == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] > stopped["epochs"]


def test_missing_parents_of_runs_dir_are_not_made_at_random(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    far = tmp_path.parent / f"{tmp_path.name}-elsewhere" / "a" / "runs"
    assert main(["train", "digits-mlp", "--runs-dir", str(far), *QUIET]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
    assert not far.parent.parent.exists()
    assert main(["train", "digits-mlp", "--epochs", "1", "--runs-dir", "x/y/runs", *QUIET]) == 0


def test_an_unreadable_lock_counts_as_held(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(runs, "digits-mlp", "--epochs", "1") == 0
    (run,) = runs_of(runs, "digits-mlp")
    (run / "run.lock").write_text("")  # a lock being written this instant
    assert train(runs, "--resume-run", str(run), "--epochs", "2") == 2
    assert "is locked" in capsys.readouterr().err


def test_runs_delete_refuses_a_run_whose_lock_is_held(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(runs, "digits-mlp", "--epochs", "1") == 0
    (run,) = runs_of(runs, "digits-mlp")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        assert main(["runs", "delete", run.name, "--yes", "--store", str(runs / "mlenv.db")]) == 2
        assert "is being trained by process" in capsys.readouterr().err
        assert run.is_dir()
    finally:
        holder.kill()
        holder.wait()


def test_a_binary_recipe_file_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"\xff\xfe\x00binary")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text" in err and err.count("\n") == 1
