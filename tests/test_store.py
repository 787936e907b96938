"""The experiment store under concurrency, killed runs, groups and their comparison."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mlenv.bench.experiments import compare_groups
from mlenv.cli import main
from mlenv.track.store import Store

WRITERS = 8
STEPS = 300  # optimizer steps per writer, two metric rows each


def concurrent_writer(path: str, index: int, barrier, out: str) -> None:
    """One run with STEPS metric transactions, started with the other writers at the barrier;
    writes each call's (start, end) on the system-wide monotonic clock to ``out``."""
    from mlenv.track.store import versions

    versions()  # imports torch and numpy now, not in the first timed call
    store = Store(path)
    run = f"run{index}"
    intervals = []

    def timed(call, *args) -> None:
        start = time.monotonic()
        call(*args)
        intervals.append((start, time.monotonic()))

    barrier.wait(timeout=120)
    timed(store.start_run, run, "concurrency", {"worker": index})
    for step in range(STEPS):
        time.sleep(0.001)  # the training step between two logs; lets the 8 writers interleave
        timed(store.log_metrics, run, step, {"loss": index + step / STEPS, "step": float(step)})
    timed(store.finish_run, run, "finished", {"final": float(index)})
    store.close()
    with open(out, "w") as f:
        json.dump(intervals, f)


def overlapping(mine: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """For each interval in ``mine`` (rows of start, end): does an interval of another process
    overlap it? Each process's own intervals are sorted and disjoint."""
    hit = np.zeros(len(mine), dtype=bool)
    for other in others:
        # the last interval of ``other`` that starts before each of mine ends
        last = np.searchsorted(other[:, 0], mine[:, 1], side="left") - 1
        valid = last >= 0
        hit[valid] |= other[last[valid], 1] > mine[valid, 0]
    return hit


def test_eight_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "mlenv.db"
    Store(path).close()  # the schema exists before the writers race
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(WRITERS)
    outs = [tmp_path / f"intervals{i}.json" for i in range(WRITERS)]
    procs = [
        context.Process(target=concurrent_writer, args=(str(path), i, barrier, str(outs[i])))
        for i in range(WRITERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
    assert [proc.exitcode for proc in procs] == [0] * WRITERS

    # the writes really contended: most transactions of every process overlapped in time with a
    # transaction of another process (one waited for the write lock while the other held it)
    intervals = [np.array(json.loads(out.read_text())) for out in outs]
    assert all(len(i) == STEPS + 2 for i in intervals)
    assert max(i[0, 0] for i in intervals) < min(i[-1, 1] for i in intervals)  # all at once
    shares = []
    for k, mine in enumerate(intervals):
        others = intervals[:k] + intervals[k + 1 :]
        shares.append(overlapping(mine, others).mean())
    print("share of each writer's transactions overlapping another writer's:", shares)
    # on a loaded machine one writer may get the CPU mostly after the others (0.42 seen): every
    # writer overlapped, and most transactions did
    assert min(shares) > 0 and np.mean(shares) >= 0.5, shares
    durations = np.concatenate([i[:, 1] - i[:, 0] for i in intervals])
    assert durations.max() > 10 * np.median(durations)  # some writer waited for the lock

    # every row is there exactly once, with its value
    store = Store(path)
    assert store.metric_count() == WRITERS * STEPS * 2
    for i in range(WRITERS):
        rows = store.metrics(f"run{i}")
        keys = [(r["step"], r["name"]) for r in rows]
        assert len(keys) == len(set(keys)) == STEPS * 2
        values = {(r["step"], r["name"]): r["value"] for r in rows}
        for step in range(STEPS):
            assert values[(step, "loss")] == i + step / STEPS
            assert values[(step, "step")] == step
    runs = store.runs("concurrency")
    assert sorted(r["id"] for r in runs) == sorted(f"run{i}" for i in range(WRITERS))
    assert {r["status"] for r in runs} == {"finished"}
    assert {r["id"]: r["summary"]["final"] for r in runs} == {
        f"run{i}": float(i) for i in range(WRITERS)
    }
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_sigkilled_run_shows_as_killed(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlenv.cli",
            "train",
            "digits-mlp",
            "--epochs",
            "500",
            "--runs_dir",
            str(tmp_path),
            "--progress",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (tmp_path / "mlenv.db").exists():
            runs = Store(tmp_path / "mlenv.db").runs()
            if runs and runs[0]["status"] == "running":
                break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = Store(tmp_path / "mlenv.db").runs()
    assert run["status"] == "killed"


def test_repeat_compare_runs_commands(tmp_path, capsys):
    common = ["--epochs", "3", "--runs_dir", str(tmp_path)]
    assert main(["repeat", "digits-mlp", "--seeds", "0-4", "--experiment", "wide", *common]) == 0
    assert (
        main(
            [
                "repeat",
                "digits-mlp",
                "--seeds",
                "0-4",
                "--experiment",
                "narrow",
                "--hidden",
                "4",
                *common,
            ]
        )
        == 0
    )
    capsys.readouterr()
    store = str(tmp_path / "mlenv.db")
    plot = tmp_path / "compare.png"
    assert (
        main(
            [
                "compare",
                "wide",
                "narrow",
                "--metric",
                "test_acc",
                "--store",
                store,
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "paired by seed" in out and "paired t-test" in out and "Wilcoxon" in out
    assert "the difference is significant" in out and "wide has a higher test_acc" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"

    assert main(["runs", "list", "--store", store, "--experiment", "wide"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 6 and all("finished" in line for line in listing[1:])
    run_id = listing[1].split()[0]
    assert main(["runs", "show", run_id, "--store", store]) == 0
    shown = capsys.readouterr().out
    assert f"run {run_id}" in shown and "test_acc" in shown and "loss_curve.png" in shown
    folder = next(p for p in (tmp_path / "wide").iterdir() if p.name == run_id)
    assert main(["runs", "delete", run_id, "--store", store, "--yes"]) == 0
    assert not folder.exists() and Store(store).run(run_id) is None


def test_delete_asks_and_keeps_on_no(tmp_path, monkeypatch, capsys):
    assert (
        main(
            [
                "train",
                "digits-mlp",
                "--epochs",
                "1",
                "--runs_dir",
                str(tmp_path),
                "--progress",
                "false",
            ]
        )
        == 0
    )
    (run,) = Store(tmp_path / "mlenv.db").runs()
    monkeypatch.setattr("builtins.input", lambda _prompt: "n")
    assert main(["runs", "delete", run["id"], "--store", str(tmp_path / "mlenv.db")]) == 1
    assert "nothing deleted" in capsys.readouterr().out
    assert (tmp_path / "digits-mlp" / run["id"]).is_dir()


def synthetic_group(store, name, kind, values, plan):
    """Finished runs with ``test_acc`` = ``values[member]``, each with a run folder whose
    summary.json records its rows (what compare reads for a cv group's n_test/n_train)."""
    group = store.create_group(name, kind, "synthetic", plan)
    for member, value in values.items():
        run_id = f"{name}-{member}"
        run_dir = store.path.parent / name / run_id
        run_dir.mkdir(parents=True)
        summary = {"test_acc": value, "data": {"sizes": [90, 10, 100]}}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        store.start_run(run_id, name, {}, group_id=group, member=member, run_dir=run_dir)
        store.finish_run(run_id, "finished", {"test_acc": value})


def test_compare_same_distribution_is_not_significant(tmp_path, capsys):
    store = Store(tmp_path / "mlenv.db")
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        synthetic_group(
            store,
            name,
            "repeat",
            {f"draw={i}": v for i, v in enumerate(rng.normal(0.9, 0.01, 10))},
            {},
        )
    results = compare_groups(store, ["a", "b"], "test_acc", 0.05)
    out = capsys.readouterr().out
    assert results[0]["paired"] and results[0]["p_adjusted"] > 0.05
    assert "not significant" in out and "do not show that a and b differ" in out


def test_compare_5x2cv_and_holm_for_three_groups(tmp_path, capsys):
    store = Store(tmp_path / "mlenv.db")
    rng = np.random.default_rng(0)
    members = [f"repeat={r},fold={f}" for r in range(5) for f in range(2)]
    plan = {"folds": 2, "repeats": 5}
    for name, shift in (("base", 0.0), ("better", 0.03), ("same", 0.0)):
        synthetic_group(
            store, name, "cv", {m: 0.8 + shift + rng.normal(0, 0.005) for m in members}, plan
        )
    results = compare_groups(store, ["base", "better", "same"], "test_acc", 0.05)
    out = capsys.readouterr().out
    assert results[0]["primary"].test == "5x2cv paired t-test"
    assert "Holm-adjusted p (2 comparisons)" in out
    assert results[0]["p_adjusted"] < 0.05 < results[1]["p_adjusted"]


def test_cv_runs_folds_as_a_group(tmp_path, capsys):
    assert (
        main(
            [
                "cv",
                "digits-mlp",
                "--folds",
                "3",
                "--experiment",
                "cv3",
                "--epochs",
                "2",
                "--runs_dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    store = Store(tmp_path / "mlenv.db")
    group = store.group("cv3")
    runs = store.runs(group_id=group["id"])
    assert sorted(r["member"] for r in runs) == [
        "repeat=0,fold=0",
        "repeat=0,fold=1",
        "repeat=0,fold=2",
    ]
    sizes = [
        json.loads((tmp_path / "cv3" / r["id"] / "summary.json").read_text())["test_acc"]
        for r in runs
    ]
    assert all(0.5 < s <= 1 for s in sizes)
    # compare reads each fold's real rows from its run: 1797 digits, 3 folds -> 599 tested;
    # the validation rows (0.1 of all: 0.15 of the other 1198, 180 rounded up) leave 1018
    capsys.readouterr()
    assert main(["compare", "cv3", "cv3", "--store", str(tmp_path / "mlenv.db")]) == 0
    assert "n_test/n_train = 599/1018 = 0.5884" in capsys.readouterr().out


def test_trackers_say_how_to_install(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.fail("this test checks the message when wandb is absent; uninstall wandb")
    assert (
        main(
            ["train", "digits-mlp", "--epochs", "1", "--wandb", "true", "--runs_dir", str(tmp_path)]
        )
        == 2
    )
    assert "install it with `pip install wandb`" in capsys.readouterr().err


def test_bench_command(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "digits-mlp", "--batch-sizes", "1,16", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["batch_size"] for r in rows] == [1, 16]
    # 64 -> 128 -> 64 -> 10: 2 * (64*128 + 128*64 + 64*10) FLOPs per sample
    assert rows[0]["flops_per_sample"] == 2 * (64 * 128 + 128 * 64 + 64 * 10)
    assert rows[0]["parameters"] == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    for r in rows:
        assert r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        assert r["train_samples_per_s"] > 0 and r["peak_memory_mb"] > 0
