"""A run session resumed at a checkpoint, without training: the store drops the rows logged after
it and the old summary, TensorBoard drops the events after it, the store's epoch rows are at
step = epoch, and metrics.csv keeps 8 significant digits."""

from __future__ import annotations

import csv
import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlenv.track.run import Run
from mlenv.track.session import RunSession
from mlenv.track.store import Store


def test_a_resumed_session_drops_what_was_logged_after_the_checkpoint(tmp_path):
    store = Store(tmp_path / "mlenv.db")
    run = Run.plan(tmp_path, "exp")
    group = store.create_group("g", "repeat", "r", {})
    first = RunSession(run, store, experiment="exp", config={}, group_id=group, member="seed=0")
    with first:
        for epoch in (1, 2, 3):  # 4 optimizer steps per epoch
            run.log_steps([("loss", 10.0 * epoch + s, 4 * (epoch - 1) + s) for s in (1, 2, 3, 4)])
            run.log_epoch({"epoch": epoch, "val_loss": 1.0 / epoch}, epoch, 4 * epoch)
        first.finish({"test_acc": 0.5})
    assert store.run(run.id)["summary"] == {"test_acc": 0.5}

    # resume from the checkpoint after epoch 2 (global step 8), then log epoch 3 anew
    resumed = RunSession(run, store, experiment="exp", config={}, resumed=(2, 8))
    with resumed:
        summary = json.loads((run.path / "summary.json").read_text())
        assert summary["status"] == "running"
        assert summary["resumed_at"] == {"epoch": 2, "global_step": 8}
        assert store.run(run.id)["summary"] == {}  # the old result no longer holds
        rows = store.metrics(run.id)
        assert [r["step"] for r in rows if r["name"] == "val_loss"] == [1, 2]
        assert [r["step"] for r in rows if r["name"] == "step/loss"] == list(range(1, 9))
        run.log_steps([("loss", 99.0 + s, 8 + s) for s in (1, 2, 3, 4)])
        run.log_epoch({"epoch": 3, "val_loss": 0.125}, 3, 12)
        resumed.finish({"test_acc": 0.75})
    record = store.run(run.id)
    assert (record["group_id"], record["member"], record["status"]) == (group, "seed=0", "finished")
    rows = store.metrics(run.id)
    assert [(r["step"], r["value"]) for r in rows if r["name"] == "val_loss"] == [
        (1, 1.0),
        (2, 0.5),
        (3, 0.125),
    ]

    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    steps = [(e.step, e.value) for e in events.Scalars("step/loss")]
    # steps 1-8 from the first session, 9-12 from the resumed one; the first 9-12 are purged
    assert steps == [(s, 10.0 + s) for s in (1, 2, 3, 4)] + [
        (s, 16.0 + s) for s in (5, 6, 7, 8)
    ] + [(s, 91.0 + s) for s in (9, 10, 11, 12)]
    assert [(e.step, e.value) for e in events.Scalars("epoch/val_loss")] == [
        (4, 1.0),
        (8, 0.5),
        (12, 0.125),
    ]


def test_metrics_csv_keeps_every_column_with_eight_digits(tmp_path):
    run = Run(tmp_path / "run")
    run.path.mkdir()
    run.write_metrics([{"epoch": 1, "val_loss": 0.123456789}, {"epoch": 2, "lr": 1e-3}])
    rows = list(csv.DictReader((run.path / "metrics.csv").open()))
    assert rows == [
        {"epoch": "1", "val_loss": "0.12345679", "lr": ""},
        {"epoch": "2", "val_loss": "", "lr": "0.001"},
    ]


def test_terminal_tables_show_small_values_in_scientific_notation():
    from mlenv.track.report import format_summary, format_table

    rows = [{"epoch": 1, "lr": 3e-5, "val_loss": 0.123456, "seconds": 2.0, "note": None}]
    assert format_table(rows).splitlines() == [
        "epoch        lr  val_loss  note",
        "-----  --------  --------  ----",
        "    1  3.00e-05    0.1235      ",
    ]
    assert format_summary({"test_acc": 0.5, "lr": 0.0}) == "test_acc  0.5000\nlr        0.0000"
