"""The store's queries on hand-made rows (no training): best run first for a min and a max metric,
the newest group of a name, group membership, killed runs, the rows a resume drops, the legacy
de-duplication, a resumed run's kept group and member."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys

from mlenv.cli import main
from mlenv.track.store import Store, best_first


def finished(store, run_id, summary, **kwargs):
    store.start_run(run_id, "exp", {}, **kwargs)
    store.finish_run(run_id, "finished", summary)


def test_best_first_is_lowest_loss_or_highest_accuracy_and_missing_last():
    runs = [
        {"id": "a", "summary": {"test_loss": 0.5, "test_acc": 0.7}},
        {"id": "b", "summary": {}},
        {"id": "c", "summary": {"test_loss": 0.2, "test_acc": 0.9}},
        {"id": "d", "summary": {"test_loss": float("nan"), "test_acc": 0.8}},
        {"id": "e", "summary": {"test_loss": 0.9, "test_acc": 0.6}},
    ]
    assert [r["id"] for r in best_first(runs, "test_loss", "min")] == ["c", "a", "e", "b", "d"]
    assert [r["id"] for r in best_first(runs, "test_acc", "max")] == ["c", "d", "a", "e", "b"]


def test_runs_list_sort_puts_the_best_run_first_for_a_loss_and_an_accuracy(tmp_path, capsys):
    db = tmp_path / "mlenv.db"
    store = Store(db)
    finished(store, "run-low-loss", {"test_loss": 0.1, "test_acc": 0.6})
    finished(store, "run-high-acc", {"test_loss": 0.4, "test_acc": 0.95})
    finished(store, "run-middle", {"test_loss": 0.2, "test_acc": 0.8})
    store.close()

    def listed(*flags):
        assert main(["runs", "list", "--store", str(db), *flags]) == 0
        return [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]

    assert listed("--sort", "test_loss") == ["run-low-loss", "run-middle", "run-high-acc"]
    assert listed("--sort", "test_acc") == ["run-high-acc", "run-middle", "run-low-loss"]
    # a metric whose name tells no direction: one line asking for --mode
    assert main(["runs", "list", "--store", str(db), "--sort", "epochs"]) == 2
    assert "--mode min or --mode max" in capsys.readouterr().err
    assert listed("--sort", "epochs", "--mode", "min")  # accepted once the direction is given


def test_a_contradicting_mode_for_runs_list_is_an_error(tmp_path, capsys):
    db = tmp_path / "mlenv.db"
    finished(Store(db), "r1", {"test_loss": 0.1})
    assert main(["runs", "list", "--store", str(db), "--sort", "test_loss", "--mode", "max"]) == 2
    assert "contradicts 'test_loss'" in capsys.readouterr().err


def test_group_by_name_is_the_newest_and_membership_is_exact(tmp_path):
    store = Store(tmp_path / "mlenv.db")
    old = store.create_group("sweep", "repeat", "digits-mlp", {"seeds": [0]})
    new = store.create_group("sweep", "repeat", "digits-mlp", {"seeds": [1, 2]})
    other = store.create_group("other", "cv", "digits-mlp", {})
    assert store.group("sweep")["id"] == new and store.group("sweep")["config"] == {"seeds": [1, 2]}
    assert store.group(str(old))["id"] == old
    assert store.group("missing") is None
    finished(store, "a0", {"x": 0.0}, group_id=old, member="seed=0")
    finished(store, "b1", {"x": 1.0}, group_id=new, member="seed=1")
    finished(store, "b2", {"x": 2.0}, group_id=new, member="seed=2")
    finished(store, "c0", {"x": 3.0}, group_id=other, member="repeat=0,fold=0")
    finished(store, "loose", {"x": 4.0})
    assert sorted(r["id"] for r in store.runs(group_id=new)) == ["b1", "b2"]
    assert [r["id"] for r in store.runs(group_id=old)] == ["a0"]
    assert sorted(r["id"] for r in store.runs()) == ["a0", "b1", "b2", "c0", "loose"]


def test_a_resumed_run_keeps_group_member_and_start_and_its_new_summary_replaces_the_old(
    tmp_path,
):
    store = Store(tmp_path / "mlenv.db")
    group = store.create_group("g", "repeat", "digits-mlp", {})
    finished(store, "r", {"test_acc": 0.5, "test_loss": 1.0}, group_id=group, member="seed=3")
    first = store.run("r")
    # the resume passes no group and no member
    store.start_run("r", "exp", {"epochs": 4})
    again = store.run("r")
    assert (again["group_id"], again["member"], again["start"]) == (
        group,
        "seed=3",
        first["start"],
    )
    assert again["status"] == "running" and again["end"] is None
    store.finish_run("r", "finished", {"test_acc": 0.75})
    assert store.run("r")["summary"] == {"test_acc": 0.75}  # test_loss is gone with the old one
    store.start_run("r", "exp", {})
    store.finish_run("r", "failed", None, error="boom")  # no summary: the old rows stay
    assert store.run("r")["summary"] == {"test_acc": 0.75} and store.run("r")["error"] == "boom"


def test_truncate_drops_exactly_the_rows_after_the_checkpoint(tmp_path):
    store = Store(tmp_path / "mlenv.db")
    store.start_run("r", "exp", {})
    for epoch in (1, 2, 3):
        store.log_metrics("r", epoch, {"val_loss": 1.0 / epoch})
    store.log_step_metrics("r", [(step, "step/loss", float(step)) for step in range(1, 13)])
    store.truncate_metrics("r", epoch=2, global_step=8)  # the checkpoint after epoch 2, step 8
    rows = store.metrics("r")
    assert [r["step"] for r in rows if r["name"] == "val_loss"] == [1, 2]
    assert [r["step"] for r in rows if r["name"] == "step/loss"] == list(range(1, 9))
    store.log_metrics("r", 2, {"val_loss": 0.25})  # a replayed row replaces, never duplicates
    assert [r["value"] for r in store.metrics("r") if r["name"] == "val_loss"] == [1.0, 0.25]


def test_a_run_whose_process_is_gone_shows_as_killed(tmp_path):
    store = Store(tmp_path / "mlenv.db")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead_pid = int(gone.stdout)
    store.start_run("dead", "exp", {})
    store.start_run("alive", "exp", {})
    store.start_run("elsewhere", "exp", {})
    store.start_run("done", "exp", {})
    store.finish_run("done", "finished", {})
    with store.transaction() as db:
        db.execute("UPDATE runs SET pid = ? WHERE id IN ('dead', 'done')", (dead_pid,))
        db.execute(
            "UPDATE runs SET pid = ?, host = 'another-host' WHERE id = 'elsewhere'", (dead_pid,)
        )
    statuses = {r["id"]: r["status"] for r in store.runs()}
    assert statuses == {
        "dead": "killed",
        "alive": "running",  # this test's own process
        "elsewhere": "running",  # another host's pid says nothing here
        "done": "finished",
    }
    assert store.run("alive")["pid"] == os.getpid()
    assert store.run("alive")["host"] == socket.gethostname()


def test_a_prefix_needs_six_characters(tmp_path):
    store = Store(tmp_path / "mlenv.db")
    finished(store, "abcdef-1", {})
    finished(store, "abcdxx-2", {})
    assert store.run("abcdef")["id"] == "abcdef-1"  # exactly MIN_PREFIX characters
    assert store.run("abcde") is None and store.run("abcd") is None
    with store.transaction() as db:  # started in this order: abcdxx-2 first
        db.execute("UPDATE runs SET start = '2026-12-01T10:00:00' WHERE id = 'abcdxx-2'")
        db.execute("UPDATE runs SET start = '2026-12-01T11:00:00' WHERE id = 'abcdef-1'")
    assert [r["id"] for r in store.runs()] == ["abcdxx-2", "abcdef-1"]  # oldest first


def test_an_old_store_with_duplicate_rows_keeps_the_newest_of_each(tmp_path):
    path = tmp_path / "old.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX metrics_key")  # a store from before the unique key
    db.execute("INSERT INTO experiments(name, created) VALUES ('exp', 'now')")
    db.execute(
        "INSERT INTO runs(id, experiment_id, config, start, status) "
        "VALUES ('r', 1, '{}', 'now', 'finished')"
    )
    rows = [("r", 1, "val_loss", 0.9), ("r", 1, "val_loss", 0.5), ("r", 2, "val_loss", 0.4)]
    db.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    kept = Store(path).metrics("r")
    assert [(r["step"], r["value"]) for r in kept] == [(1, 0.5), (2, 0.4)]


def test_a_boolean_summary_value_is_not_a_number(tmp_path):
    store = Store(tmp_path / "mlenv.db")
    finished(store, "r", {"early_stopped": True, "test_acc": 0.5})
    assert store.run("r")["summary"] == {"test_acc": 0.5}
