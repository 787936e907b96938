"""mlenv sweep: real Optuna studies in real databases (SQLite, and a throwaway PostgreSQL server),
worked on by real `mlenv sweep` processes that train the tabular recipe on spambase."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from mlenv.bench import sweep as sweeps
from mlenv.cli import main
from mlenv.config import TRAIN_FIELDS, load_recipe
from mlenv.errors import ConfigError

SPACE = """\
lr: {type: categorical, choices: [0.00001, 0.003]}
hidden: {type: categorical, choices: [[16], [32, 16]]}
"""
# a good learning rate twice, then one that barely moves the loss twice: with one finished
# trial the median pruner must stop the slow ones after their first epoch
ENQUEUED = [
    {"lr": 0.003, "hidden": "[16]"},
    {"lr": 0.003, "hidden": "[32, 16]"},
    {"lr": 0.00001, "hidden": "[16]"},
    {"lr": 0.00001, "hidden": "[16]"},
]
TRIALS = 4


def spambase_flags(shared_data: Path, runs: Path) -> list[str]:
    data = shared_data / "tabular" / "spambase.data"
    return ["--data", str(data), "--no_header", "true", "--runs_dir", str(runs)]


# -- a throwaway PostgreSQL server ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """MLENV_TEST_POSTGRES_URL, else a cluster made with initdb in a temporary folder and
    started with pg_ctl (as the postgres user when run as root: the server refuses root)."""
    given = os.environ.get("MLENV_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        why = (
            "PostgreSQL test skipped: no server binaries in /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql) and MLENV_TEST_POSTGRES_URL is not set"
        )
        if os.environ.get("CI"):
            pytest.fail(why.replace("skipped", "cannot run in CI"))
        pytest.skip(why)
    bindir = Path(found[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="mlenv-pg-"))
    user = None
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    port = _free_port()

    def pg(*args: str) -> None:
        subprocess.run(
            [str(bindir / args[0]), *args[1:]], check=True, user=user, capture_output=True
        )

    try:
        pg("initdb", "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "-N")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg(
            "pg_ctl",
            "-D",
            str(folder / "data"),
            "-l",
            str(folder / "log"),
            "-w",
            "-o",
            options,
            "start",
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"],
            user=user,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request):
    """None: the default SQLite database in the runs folder; or a PostgreSQL URL."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


# -- two workers, a killed one, pruning, resume ---------------------------------------------------


def mlenv_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlenv.cli", *args]


def store_rows(db: Path, query: str, *args) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(query, args).fetchall()


def stop_during_first_trial(command: list[str], runs: Path, cwd: Path) -> Path:
    """Start a worker, SIGTERM it once its first trial's run has saved epoch 1 (mid-trial),
    wait for it to end, and return that run's folder."""
    worker = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            saved = glob.glob(str(runs / "study" / "*" / "checkpoints" / "last.pt"))
            if saved:
                worker.send_signal(signal.SIGTERM)
                out = worker.communicate(timeout=60)[0].decode()
                assert worker.returncode == 130 and "stopped by SIGTERM" in out, out
                return Path(saved[0]).parent.parent
            assert worker.poll() is None, worker.stdout.read().decode()
            time.sleep(0.02)
        raise AssertionError("the first trial saved no checkpoint in 120 s")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@pytest.mark.slow
def test_two_workers_share_one_study(shared_data, tmp_path, storage, capsys):
    runs = tmp_path / "runs"
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    url = storage or f"sqlite:///{runs / 'optuna.db'}"
    runs.mkdir()
    study = optuna.create_study(study_name="study", storage=url)
    for params in ENQUEUED:  # made outside mlenv: the sweep takes the study over
        study.enqueue_trial(params)
    flags = [
        "sweep",
        "tabular-binary",
        *spambase_flags(shared_data, runs),
        "--epochs",
        "3",
        "--space",
        str(space),
        "--trials",
        str(TRIALS),
        "--study",
        "study",
        "--pruner-startup",
        "1",
        *(["--storage", storage] if storage else []),
    ]
    stopped_run = None
    if storage is None:  # a worker is stopped half-way through trial 0 (SIGTERM: it saves a
        # checkpoint, leaves the trial running and exits); the next command resumes the trial
        stopped_run = stop_during_first_trial(mlenv_command(*flags), runs, tmp_path)

    done = subprocess.run(
        mlenv_command(*flags, "--workers", "2"), cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout

    trials = optuna.load_study(study_name="study", storage=url).trials
    assert [t.number for t in trials] == list(range(TRIALS))  # N trials, not one more or less
    states = {t.number: t.state for t in trials}
    assert TrialState.RUNNING not in states.values() and TrialState.WAITING not in states.values()
    assert states[0] == TrialState.COMPLETE
    assert states[2] == states[3] == TrialState.PRUNED, out

    db = runs / "mlenv.db"
    (group,) = store_rows(db, "SELECT * FROM groups WHERE name = 'study'")
    assert group["kind"] == "sweep"
    members = store_rows(db, "SELECT * FROM runs WHERE group_id = ?", group["id"])
    # every trial is one run, recorded once, under its number
    assert sorted(r["member"] for r in members) == [f"trial={n}" for n in range(TRIALS)]
    by_member = {r["member"]: r for r in members}
    for t in trials:
        run = by_member[f"trial={t.number}"]
        assert t.user_attrs["run_id"] == run["id"]
        expected = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned"}[t.state]
        assert run["status"] == expected
    for n in (2, 3):  # pruned at the first epoch: one epoch of metrics, the status says why
        run = by_member[f"trial={n}"]
        epochs = store_rows(
            db,
            "SELECT DISTINCT step FROM metrics WHERE run_id = ? AND name = 'val_loss'",
            run["id"],
        )
        assert len(epochs) == 1
        assert "pruned by the median pruner at epoch 1" in run["error"]
    if stopped_run is not None:  # adopted and resumed from its checkpoint, not started again
        assert "trial 0 (adopted): complete" in out and "(resumed)" in out
        assert by_member["trial=0"]["id"] == stopped_run.name
        summary = json.loads((stopped_run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["epochs"] == 3
        steps = 3 * math.ceil(summary["data"]["sizes"]["train"] / 32)
        assert 0 < summary["steps_run"] < steps  # this process took only the steps left

    # a trial's value is its run's best epoch; the best trial's run resumes like any run
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert best.value == min(best.intermediate_values.values())
    best_run = Path(by_member[f"trial={best.number}"]["run_dir"])
    if storage is None:  # (the run and the store are the same whatever holds the study)
        resume = ["train", "--resume-run", str(best_run), "--epochs", "4", "--progress", "false"]
        assert main(resume) == 0
        resumed = json.loads((best_run / "summary.json").read_text())
        assert resumed["status"] == "finished" and resumed["epochs"] == 4
        capsys.readouterr()

    # show: the best trials, the importances and two PNG plots
    plots = tmp_path / "plots"
    assert main(["sweep", "show", "study", "--storage", url, "--out", str(plots)]) == 0
    shown = capsys.readouterr().out
    assert f"{TRIALS} trials" in shown and "best trial's flags: --lr" in shown
    importances = sweeps.param_importances(sweeps.load_study("study", url))
    if importances:  # two finished trials whose parameters differ
        assert "parameter importances (fANOVA" in shown
        assert all(f"  {name}" in shown for name in importances)
    else:
        assert "parameter importances: need 2+ finished trials" in shown
    for name in sweeps.PLOTS:
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- many workers claiming at once never make more than N trials ----------------------------------


def claim_all(url: str, ready: threading.Barrier, claimed: list[int]) -> None:
    """A worker of its own (its own storage: its own connections and lock) claiming until the
    study is full; ``claimed`` gets how many trials it took."""
    storage = sweeps.open_storage(url)
    study = optuna.load_study(study_name="race", storage=storage)
    plan = SimpleNamespace(study_name="race", trials=RACE_TRIALS)
    ready.wait()
    count = 0
    while (claim := sweeps.claim_trial(study, storage, plan)) is not None:
        study.tell(claim.trial, 0.0)
        count += 1
    claimed.append(count)


# workers that all ask at once for the last place of a study: exactly one of them gets it
RACE_TRIALS = 1
RACE_WORKERS = 3


def test_concurrent_claims_stop_at_the_study_size(tmp_path, storage):
    url = storage or f"sqlite:///{tmp_path / 'optuna.db'}"
    if storage:  # a fresh study on the shared server
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name="race", storage=url)
    optuna.create_study(study_name="race", storage=url)
    ready = threading.Barrier(RACE_WORKERS + 1)
    claimed: list[int] = []
    workers = [
        threading.Thread(target=claim_all, args=(url, ready, claimed)) for _ in range(RACE_WORKERS)
    ]
    with sweeps.study_lock(sweeps.open_storage(url), "race") as locked:  # held by the test
        assert locked
        for worker in workers:
            worker.start()
        ready.wait(timeout=60)
        time.sleep(1)  # every worker is claiming now: none gets past the lock
        assert optuna.load_study(study_name="race", storage=url).trials == []
    for worker in workers:
        worker.join(timeout=60)
    trials = optuna.load_study(study_name="race", storage=url).trials
    assert len(trials) == RACE_TRIALS and sorted(claimed) == [0] * (RACE_WORKERS - 1) + [1]


# -- what a wrong space or flag says ---------------------------------------------------------------


def plan(tmp_path, shared_data, space, *flags, **options):
    path = tmp_path / "space.yaml"
    path.write_text(space)
    overrides = [*spambase_flags(shared_data, tmp_path / "runs"), *flags]
    return sweeps.plan_sweep(load_recipe("tabular-binary"), str(path), 4, overrides, **options)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            "lrr: {type: float, low: 1e-4, high: 1e-2}",
            r"space.yaml: unknown key 'lrr' \(did you mean 'lr'\?\); allowed keys: .*\blr\b",
        ),
        (
            "lr: {type: floaty, low: 1e-4, high: 1e-2}",
            r"lr: type accepts float, int, categorical, got 'floaty'",
        ),
        (
            "lr: {type: float, lo: 1e-4, high: 1e-2}",
            r"lr: unknown key 'lo' for type float; allowed keys: type, low, high, log, step",
        ),
        (
            "hidden: {type: categorical, values: [[16]]}",
            r"hidden: unknown key 'values' for type categorical; allowed keys: type, choices",
        ),
        ("lr: {type: float, low: 1e-2, high: 1e-4}", r"lr: low \(0.01\) must not exceed high"),
        ("lr: {type: float, low: 0, high: 1e-2, log: true}", r"lr: log needs low > 0, got 0"),
        ("batch_size: {type: int, low: 8.5, high: 64}", r"batch_size: low: accepts an integer"),
        ("runs_dir: {type: categorical, choices: [a, b]}", r"unknown key 'runs_dir'"),
        ("hidden: {type: categorical, choices: [wide]}", r"hidden: wide is refused: .*hidden"),
        ("lr: 0.001", r"lr: accepts a mapping with a type \(float, int, categorical\)"),
        ("[lr]", r"holds a list; write one entry per field"),
    ],
)
def test_space_errors_name_the_key_and_what_is_allowed(tmp_path, shared_data, space, message):
    with pytest.raises(ConfigError, match=message):
        plan(tmp_path, shared_data, space)


def test_space_reads_numbers_yaml_leaves_as_text(tmp_path, shared_data):
    sweep = plan(tmp_path, shared_data, "lr: {type: float, low: 1e-4, high: 1e-2, log: true}")
    (param,) = sweep.space
    assert (param.low, param.high, param.log) == (0.0001, 0.01, True)
    assert sweep.mode == "min" and sweep.metric == "val_loss"


def test_flag_errors_are_one_line_naming_the_flag(tmp_path, shared_data, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 1e-4, high: 1e-2}")
    base = ["sweep", "tabular-binary", *spambase_flags(shared_data, tmp_path / "runs")]
    base += ["--space", str(space), "--trials", "2"]
    cases = [
        (["--pruner", "random"], "--pruner: invalid choice: 'random'"),
        (["--mode", "max"], "--mode: 'max' contradicts 'val_loss'"),
        (["--metric", "val_nope", "--mode", "min"], "--metric: 'val_nope' is not a metric"),
        (["--storage", "nowhere"], "--storage: 'nowhere' is not a database URL"),
        (["--study", "a/b"], "--study: accepts a folder name"),
        (["--monitor", "val_acc"], "--monitor: a sweep sets it"),
    ]
    if "devices" in TRAIN_FIELDS:
        cases.append((["--devices", "2"], "--devices: a sweep trains each trial in one process"))
    for flags, message in cases:
        assert main([*base, *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (flags, err)
    assert not (tmp_path / "runs" / "optuna.db").exists()  # refused before a study is made
    assert main(["sweep", "show", "nope", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "sweep show: no study database at" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "optuna.db").exists()
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    assert main(["sweep", "show", "nope", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "no study 'nope' in sqlite:///" in err and "(studies: other)" in err


def test_a_study_is_continued_only_with_its_own_search(tmp_path, shared_data):
    sweep = plan(tmp_path, shared_data, "lr: {type: float, low: 1e-4, high: 1e-2}")
    sweeps.open_sweep(sweep)
    other = plan(tmp_path, shared_data, "lr: {type: float, low: 1e-4, high: 1e-1}")
    with pytest.raises(ConfigError, match=r"--space: study 'tabular-binary-sweep' searches"):
        sweeps.open_sweep(other)
    with pytest.raises(ConfigError, match=r"--mode: study 'tabular-binary-sweep' minimizes"):
        sweeps.open_sweep(
            plan(
                tmp_path, shared_data, "lr: {type: float, low: 1e-4, high: 1e-2}", metric="val_acc"
            )
        )


# -- pieces: the value, the space's values, a dead worker's trial ----------------------------------


def test_a_trials_value_is_its_best_epoch():
    history = [{"val_loss": 0.3, "val_acc": 0.8}, {"val_loss": 0.2}, {"val_loss": float("nan")}]
    history += [{"val_loss": 0.25, "val_acc": 0.9}]
    assert sweeps.best_value(history, "val_loss", "min") == 0.2
    assert sweeps.best_value(history, "val_acc", "max") == 0.9
    assert sweeps.best_value([{"val_loss": float("nan")}], "val_loss", "min") is None


def test_space_values_reach_the_run_as_flags(tmp_path, shared_data):
    from mlenv.config import resolve

    space = """\
lr: {type: float, low: 1e-4, high: 1e-2, log: true}
weight_decay: {type: float, low: 0.0, high: 0.01, step: 0.005}
batch_size: {type: int, low: 16, high: 64, step: 16}
hidden: {type: categorical, choices: [[64, 32]]}
optimizer: {type: categorical, choices: [adamw]}
"""
    sweep = plan(tmp_path, shared_data, space)
    trial = optuna.create_study().ask()
    params = {p.name: p.suggest(trial) for p in sweep.space}
    dist = trial.distributions
    assert dist["lr"].log and (dist["lr"].low, dist["lr"].high) == (1e-4, 1e-2)
    assert dist["weight_decay"].step == 0.005 and dist["batch_size"].step == 16
    assert params["hidden"] == "[64, 32]" and params["weight_decay"] in (0.0, 0.005, 0.01)
    cfg = resolve(sweep.recipe, sweep.trial_args(params))
    assert cfg.model_args["hidden"] == [64, 32] and cfg.train.optimizer == "adamw"
    assert cfg.train.lr == params["lr"] and cfg.train.batch_size == params["batch_size"]
    assert cfg.train.experiment == "tabular-binary-sweep" and cfg.train.monitor == "val_loss"


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_a_trial_lost_on_another_host_is_failed_and_replaced(tmp_path, shared_data, monkeypatch):
    monkeypatch.setattr(sweeps, "HEARTBEAT_S", 1)
    monkeypatch.setattr(sweeps, "GRACE_S", 1)
    sweep = plan(tmp_path, shared_data, "lr: {type: float, low: 1e-4, high: 1e-2}")
    sweep.trials = 1
    storage, study, _ = sweeps.open_sweep(sweep)
    lost = sweeps.claim_trial(study, storage, sweep).trial
    lost.set_user_attr("worker", {"host": "another-machine", "pid": 1})
    assert sweeps.claim_trial(study, storage, sweep) is None  # its heartbeat is fresh
    time.sleep(2.5)
    claim = sweeps.claim_trial(study, storage, sweep)
    assert claim is not None and not claim.adopted and claim.trial.number == 1
    assert study.trials[0].state == TrialState.FAIL


def test_a_dead_workers_finished_run_is_told_not_trained_again(tmp_path, shared_data, capsys):
    sweep = plan(
        tmp_path, shared_data, "lr: {type: categorical, choices: [0.003]}", "--epochs", "2"
    )
    sweep.trials = 1
    storage, study, group = sweeps.open_sweep(sweep)
    claim = sweeps.claim_trial(study, storage, sweep)
    params = {p.name: p.suggest(claim.trial) for p in sweep.space}
    reporter = sweeps.TrialReporter(claim.trial, sweep.metric, sweep.pruner)
    run = sweeps._train(sweep, params, group, "trial=0", reporter, None)  # then the worker dies
    claim.trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": dead_pid()})
    capsys.readouterr()

    (outcome,) = sweeps.run_worker(sweep)
    assert outcome.state == "complete" and outcome.detail == "finished before; value told"
    assert "trial 0 (adopted): complete" in capsys.readouterr().out
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["run_id"] == run.run_dir.name
    assert trial.value == sweeps.best_value(run.history, "val_loss", "min")
    runs = store_rows(tmp_path / "runs" / "mlenv.db", "SELECT id FROM runs")
    assert [r["id"] for r in runs] == [run.run_dir.name]  # nothing trained again


def test_a_trial_left_without_its_worker_is_adopted(tmp_path, shared_data):
    """A worker killed between asking for a trial and naming itself on it leaves a running trial
    that no one owns: under the lock, the next claim takes it over."""
    sweep = plan(tmp_path, shared_data, "lr: {type: float, low: 1e-4, high: 1e-2}")
    storage, study, _ = sweeps.open_sweep(sweep)
    with warnings.catch_warnings():  # (Optuna: a heartbeat storage is meant for optimize())
        warnings.simplefilter("ignore")
        study.ask()
    claim = sweeps.claim_trial(study, storage, sweep)
    assert claim.adopted and claim.trial.number == 0
    assert claim.trial.user_attrs["worker"]["pid"] == os.getpid()
    again = sweeps.claim_trial(study, storage, sweep)  # owned now, by a live process
    assert not again.adopted and again.trial.number == 1


def test_a_recreated_study_does_not_take_the_old_studys_runs(tmp_path, shared_data):
    """The study database deleted and the sweep started again under the same name: the store
    still holds the old study's finished trial=0 run, which must not become the new study's
    trial 0 value (review finding: it was told as the new trial's value)."""
    sweep = plan(
        tmp_path, shared_data, "lr: {type: categorical, choices: [0.003]}", "--epochs", "1"
    )
    sweep.trials = 1
    (outcome,) = sweeps.run_worker(sweep)
    assert outcome.state == "complete"
    (tmp_path / "runs" / "optuna.db").unlink()
    again = plan(
        tmp_path, shared_data, "lr: {type: categorical, choices: [0.0001]}", "--epochs", "1"
    )
    again.trials = 1
    with pytest.raises(ConfigError, match=r"--study: the store .* holds the runs of another study"):
        sweeps.run_worker(again)
