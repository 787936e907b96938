"""Hyperparameter sweeps: ``mlenv sweep`` runs an Optuna study whose trials are mlenv runs, and
``mlenv sweep show`` reports on it.

Each trial is a normal run (folder, checkpoints, summary) recorded in the experiment store as a
member ``trial=N`` of a ``sweep`` group named after the study. Every epoch the run's monitored
metric is reported to the trial (a tracker of the run), and the pruner may end the run there:
its status is then ``pruned``. The study lives in a database that Optuna opens (SQLite in the
runs folder by default, or any URL it accepts, e.g. PostgreSQL), so several processes or
machines share it. ``--trials N`` is the size of the whole study: workers stop when N trials are
finished or running, and running the command again continues an unfinished study.

A trial whose worker died is handled as follows. On the same host (its process is gone) the next
worker adopts it: a run with a checkpoint resumes from it exactly, a run that had finished only
reports its value, and a run without a checkpoint starts again. On another host, the storage's
heartbeat marks it failed after a grace period, and a new trial takes its place. Ctrl-C leaves
the current trial running in the study, with its checkpoint, for the next command to resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlenv.errors import ConfigError, MlenvError

KINDS = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step")}
KINDS["categorical"] = ("choices",)
# Fields a trial cannot vary: where runs go and what the sweep itself sets.
NOT_SWEPT = (
    "recipe",
    "config",
    "resume",
    "experiment",
    "runs_dir",
    "store",
    "progress",
    "monitor",
    "mode",
    "fast_dev_run",
    "devices",
)
PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_S = 20  # a running trial's heartbeat; after GRACE_S without one, another host fails it
GRACE_S = 120
PLOTS = ("optimization_history.png", "parallel_coordinate.png")


# ----------------------------------------------------------------------------------------------
# The search space file.


@dataclass
class Param:
    """One swept field: ``float``/``int`` between ``low`` and ``high`` (``log``, ``step``), or
    ``categorical`` over ``choices``. A list choice (``hidden: [64, 32]``) is kept as its text,
    since Optuna's categorical values are scalars."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.name, self.low, self.high, log=self.log, step=self.step or 1
            )
        return trial.suggest_categorical(self.name, self.choices)

    def values_to_check(self) -> list[Any]:
        return [self.low, self.high] if self.kind != "categorical" else list(self.choices)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name}: one of {', '.join(map(str, self.choices))}"
        extra = (" log" if self.log else "") + (f" step {self.step}" if self.step else "")
        return f"{self.name}: {self.kind} in [{self.low}, {self.high}]{extra}"


def flag_text(value: Any) -> str:
    """A value as the command line writes it (``--lr 0.0003``, ``--early_stopping true``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def param_flags(params: dict[str, Any]) -> list[str]:
    """``{"lr": 0.001, "hidden": "[64, 32]"}`` -> ``["--lr", "0.001", "--hidden", "[64, 32]"]``."""
    flags: list[str] = []
    for name, value in params.items():
        flags += [f"--{name}", flag_text(value)]
    return flags


def _number(text: Any, where: str, integer: bool) -> float | int:
    """YAML reads ``1e-4`` (no dot) as text: accept it as the number it is."""
    if isinstance(text, bool) or not isinstance(text, int | float | str):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: accepts {kind}, got {text!r}")
    try:
        value = float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: accepts {kind}, got {text!r}") from None
    if integer:
        if not value.is_integer():
            raise ConfigError(f"{where}: accepts an integer, got {text!r}")
        return int(value)
    return value


def parse_space(raw: Any, source: str, fields: list[str]) -> list[Param]:
    """The parameters of a search space mapping (what ``--space FILE`` holds), each checked:
    a field of the recipe, a known ``type``, only that type's keys, sensible bounds.

    >>> parse_space({"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    ...             "space.yaml", ["lr"])[0].describe()
    'lr: float in [0.0001, 0.01] log'
    """
    from mlenv.config import unknown_key_message

    if not isinstance(raw, dict) or not raw:
        got = "an empty file" if not raw else f"a {type(raw).__name__}"
        raise ConfigError(
            f"--space: {source} holds {got}; write one entry per field, e.g. "
            "lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}"
        )
    allowed_fields = [f for f in fields if f not in NOT_SWEPT]
    params = []
    for name, spec in raw.items():
        where = f"--space: {source}: {name}"
        if name not in allowed_fields:
            raise ConfigError(
                f"--space: {source}: {unknown_key_message(str(name), allowed_fields)}"
            )
        if not isinstance(spec, dict):
            raise ConfigError(
                f"{where}: accepts a mapping with a type ({', '.join(KINDS)}), got {spec!r}"
            )
        kind = spec.get("type")
        if kind not in KINDS:
            raise ConfigError(f"{where}: type accepts {', '.join(KINDS)}, got {kind!r}")
        for key in spec:
            if key != "type" and key not in KINDS[kind]:
                allowed = ", ".join(("type", *KINDS[kind]))
                raise ConfigError(
                    f"{where}: unknown key {key!r} for type {kind}; allowed keys: {allowed}"
                )
        params.append(_param(str(name), kind, spec, where))
    return params


def _param(name: str, kind: str, spec: dict[str, Any], where: str) -> Param:
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices accepts a non-empty list, got {choices!r}")
        as_text = [
            c if c is None or isinstance(c, bool | int | float | str) else json.dumps(c)
            for c in choices
        ]
        if len(set(map(repr, as_text))) < len(as_text):
            raise ConfigError(f"{where}: choices holds a value twice: {choices!r}")
        return Param(name, kind, choices=as_text)
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{where}: type {kind} needs low and high")
    integer = kind == "int"
    low = _number(spec["low"], f"{where}: low", integer)
    high = _number(spec["high"], f"{where}: high", integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log accepts true or false, got {log!r}")
    step = None if spec.get("step") is None else _number(spec["step"], f"{where}: step", integer)
    if high < low:
        raise ConfigError(f"{where}: low ({low}) must not exceed high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: log needs low > 0, got {low}")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step accepts a number > 0, got {step}")
    if log and step is not None and (not integer or step != 1):
        raise ConfigError(f"{where}: give log or step, not both")
    return Param(name, kind, low, high, log, step)


def load_space(path: str | Path) -> Any:
    """The raw mapping of a space file (YAML); errors name ``--space`` and the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(f"--space: {path} {what}; give a YAML file of fields to search")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"--space: {path} is not a UTF-8 text file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"--space: {path} is not valid YAML{at}") from None


# ----------------------------------------------------------------------------------------------
# The study's storage.


def default_storage(runs_dir: str | Path) -> str:
    """SQLite beside the experiment store: ``<runs_dir>/optuna.db``."""
    return f"sqlite:///{Path(os.path.abspath(runs_dir)) / 'optuna.db'}"


def shown_url(url: str) -> str:
    """A storage URL with its password hidden (it goes to the terminal and the store)."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url.split("@")[-1]


def open_storage(url: str, heartbeat: bool = True) -> Any:
    """An Optuna ``RDBStorage`` on ``url`` (with a heartbeat, so a trial whose machine died is
    failed by the others); every problem is one line naming ``--storage``."""
    import optuna
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(
            f"--storage: {url!r} is not a database URL; accepts e.g. sqlite:///runs/optuna.db "
            "or postgresql://user:password@host:5432/dbname"
        ) from None
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise ConfigError("--storage: an in-memory SQLite database cannot be shared")
        folder = Path(database).absolute().parent
        if not folder.is_dir():
            raise ConfigError(f"--storage: the folder {folder} does not exist")
        engine_kwargs["connect_args"] = {"timeout": 120}  # workers queue for the write lock
    beat = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S} if heartbeat else {}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beat)
        except ImportError as exc:
            raise ConfigError(
                f"--storage: no database driver for {parsed.drivername} ({exc.__cause__ or exc})"
            ) from None
        except sqlalchemy.exc.IntegrityError:
            # two processes made the tables at once: the later one opens what the other made
            if attempt == 2:
                raise ConfigError(
                    f"--storage: cannot create the tables in {shown_url(url)}"
                ) from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise ConfigError(f"--storage: cannot open {shown_url(url)}: {first}") from None


@contextlib.contextmanager
def study_lock(storage: Any, study_name: str) -> Iterator[bool]:
    """Serialise "how many trials are left" and the claim of one, so N trials are never
    exceeded: a file lock beside a SQLite database, an advisory lock in PostgreSQL (one for all
    machines). Other databases go without (a study may then get up to workers-1 extra trials);
    yields whether the lock is held."""
    import sqlalchemy

    url = storage.engine.url
    if url.get_backend_name() == "sqlite":
        import fcntl

        with open(f"{url.database}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif url.get_backend_name() == "postgresql":
        digest = hashlib.sha256(f"mlenv-sweep:{study_name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with storage.engine.begin() as connection:  # released when the transaction ends
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            yield True
    else:
        yield False


# ----------------------------------------------------------------------------------------------
# The plan of a sweep and its study.


@dataclass
class Sweep:
    """Everything a worker needs; built and checked by :func:`plan_sweep`."""

    recipe: Any
    space: list[Param]
    space_raw: dict[str, Any]
    trials: int
    study_name: str
    storage_url: str
    metric: str
    mode: str
    pruner: str
    pruner_startup: int
    pruner_warmup: int
    overrides: list[str]
    runs_dir: str
    store_path: str
    epochs: int

    def trial_args(self, params: dict[str, Any]) -> list[str]:
        return [
            *self.overrides,
            *param_flags(params),
            "--experiment",
            self.study_name,
            "--progress",
            "false",
            "--monitor",
            self.metric,
            "--mode",
            self.mode,
        ]

    def plan(self) -> dict[str, Any]:
        """What the study records so every worker runs the same search."""
        return {
            "recipe": self.recipe.name,
            "space": self.space_raw,
            "metric": self.metric,
            "mode": self.mode,
            "overrides": self.overrides,
        }


def plan_sweep(
    recipe: Any,
    space_file: str,
    trials: int,
    overrides: list[str],
    *,
    study: str | None = None,
    storage: str | None = None,
    metric: str | None = None,
    mode: str | None = None,
    pruner: str = "median",
    pruner_startup: int = 5,
    pruner_warmup: int = 0,
) -> Sweep:
    """Check everything a sweep needs before any trial runs: the flags, the space (each bound
    and choice must be a value the recipe's field accepts), the runs folder and the store."""
    from mlenv.config import build_parser, check_experiment_name, resolve, resolve_mode
    from mlenv.train.run import new_run_locations

    if trials < 1:
        raise ConfigError(f"--trials: accepts an integer >= 1, got {trials}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner: accepts {', '.join(PRUNERS)}, got {pruner!r}")
    for flag, value in (("--pruner-startup", pruner_startup), ("--pruner-warmup", pruner_warmup)):
        if value < 0:
            raise ConfigError(f"{flag}: accepts an integer >= 0, got {value}")
    study = study or f"{recipe.name}-sweep"
    try:
        check_experiment_name(study)
    except ConfigError as exc:
        raise ConfigError("--study: " + str(exc).split(": ", 1)[1]) from None
    for flag in ("--experiment", "--monitor", "--mode", "--resume", "--progress"):
        if any(a.split("=")[0] in (flag, flag.replace("-", "_")) for a in overrides):
            raise ConfigError(
                f"{flag}: a sweep sets it (runs go to the study's experiment, the monitor is "
                "--metric); leave it out"
            )
    base = new_run_locations(resolve(recipe, [*overrides, "--experiment", study], "mlenv sweep"))
    if getattr(base.train, "devices", 1) > 1:
        raise ConfigError(
            "--devices: a sweep trains each trial in one process; give --workers K to run "
            "trials side by side"
        )
    metric = metric or base.train.monitor
    try:
        mode = resolve_mode(
            metric, mode or (base.train.mode if metric == base.train.monitor else None)
        )
    except ConfigError as exc:
        raise ConfigError("--mode: " + str(exc).split(": ", 1)[1]) from None
    fields = [a.dest for a in build_parser(recipe, "mlenv sweep")._actions]
    space_raw = load_space(space_file)
    space = parse_space(space_raw, space_file, fields)
    sweep = Sweep(
        recipe=recipe,
        space=space,
        space_raw=space_raw,
        trials=trials,
        study_name=study,
        storage_url=storage or default_storage(base.train.runs_dir),
        metric=metric,
        mode=mode,
        pruner=pruner,
        pruner_startup=pruner_startup,
        pruner_warmup=pruner_warmup,
        overrides=list(overrides),
        runs_dir=base.train.runs_dir,
        store_path=str(base.train.store),
        epochs=base.train.epochs,
    )
    for param in space:  # every bound and choice is a value the field accepts
        for value in param.values_to_check():
            try:
                resolve(recipe, sweep.trial_args({param.name: value}), "mlenv sweep")
            except ConfigError as exc:
                raise ConfigError(
                    f"--space: {space_file}: {param.name}: {flag_text(value)} is refused: {exc}"
                ) from None
    if storage is None:  # the default database lives in the runs folder
        Path(base.train.runs_dir).mkdir(parents=True, exist_ok=True)
    return sweep


def check_trial_runs(sweep: Sweep) -> None:
    """One batch of training and validation with the space's first values (nothing written):
    the data, the model and ``--metric`` are checked before a worker starts."""
    from mlenv.config import resolve
    from mlenv.train.run import run_recipe

    first = {p.name: p.values_to_check()[0] for p in sweep.space}
    args = [*sweep.trial_args(first), "--fast_dev_run", "true", "--early_stopping", "true"]
    cfg = resolve(sweep.recipe, args, "mlenv sweep")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            run_recipe(cfg, out=io.StringIO())
    except ConfigError as exc:
        text = str(exc)
        for field_name, flag in (("monitor: ", "--metric: "), ("mode: ", "--mode: ")):
            if text.startswith(field_name):
                raise ConfigError(flag + text[len(field_name) :]) from None
        raise


def _quiet_optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_pruner(sweep: Sweep) -> Any:
    optuna = _quiet_optuna()
    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=sweep.pruner_startup, n_warmup_steps=sweep.pruner_warmup
        )
    if sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=sweep.epochs)
    return optuna.pruners.NopPruner()


def open_study(sweep: Sweep, storage: Any) -> Any:
    """Create the study or load it (``load_if_exists``); a study made for another recipe,
    metric or space is refused, a study made outside mlenv is taken over."""
    optuna = _quiet_optuna()
    direction = "minimize" if sweep.mode == "min" else "maximize"
    sampler = optuna.samplers.TPESampler(constant_liar=True)  # workers spread out
    with study_lock(storage, sweep.study_name):
        study = optuna.create_study(
            storage=storage,
            study_name=sweep.study_name,
            direction=direction,
            sampler=sampler,
            pruner=make_pruner(sweep),
            load_if_exists=True,
        )
        if study.direction.name.lower() != direction:
            raise ConfigError(
                f"--mode: study {sweep.study_name!r} {study.direction.name.lower()}s its "
                f"objective, and --mode {sweep.mode} would {direction} it; give a new --study"
            )
        plan = sweep.plan()
        stored = study.user_attrs.get("mlenv")
        if stored is None:
            import uuid

            study.set_user_attr("mlenv", plan)
            # which study this is, whatever its name: a store group made for another study of
            # the same name (a recreated database, another --storage) is never taken for it
            study.set_user_attr("mlenv_key", uuid.uuid4().hex)
            return study
    for key, flag in (("recipe", "RECIPE"), ("metric", "--metric"), ("space", "--space")):
        if stored[key] != plan[key]:
            raise ConfigError(
                f"{flag}: study {sweep.study_name!r} searches with {key} "
                f"{_short(stored[key])}, not {_short(plan[key])}; run it as it was, or give a "
                "new --study"
            )
    if _without_execution(stored["overrides"]) != _without_execution(plan["overrides"]):
        print(
            f"mlenv: warning: study {sweep.study_name!r} was started with the flags "
            f"{' '.join(stored['overrides']) or '(none)'}; this worker runs its trials with "
            f"{' '.join(plan['overrides']) or '(none)'}",
            file=sys.stderr,
        )
    return study


def _without_execution(flags: list[str]) -> list[str]:
    """The flags less those that only say where a worker runs (threads, device): they may
    differ between machines without changing the search."""
    out: list[str] = []
    skip = False
    for token in flags:
        name = token.split("=")[0].replace("-", "_")
        if skip:
            skip = False
        elif name in ("__threads", "__device"):
            skip = "=" not in token
        else:
            out.append(token)
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) < 120 else text[:117] + "..."


def sweep_group(store: Any, sweep: Sweep, study_key: str | None = None) -> int:
    """The store's ``sweep`` group named after the study, created by the first worker. A group
    of that name made for another study (``study_key`` differs: the study's database was
    recreated, or another --storage holds a study of the same name) is refused: its finished
    runs would otherwise be told to this study as its trials' values."""
    config = {
        **sweep.plan(),
        "study": sweep.study_name,
        "storage": shown_url(sweep.storage_url),
        "study_key": study_key,
    }
    with store.transaction() as db:  # one transaction: two workers never make two groups
        row = db.execute(
            "SELECT id, kind FROM groups WHERE name = ? ORDER BY id DESC LIMIT 1",
            (sweep.study_name,),
        ).fetchone()
        if row is not None and row["kind"] == "sweep":
            found = db.execute("SELECT config FROM groups WHERE id = ?", (row["id"],)).fetchone()
            known = json.loads(found["config"] or "{}").get("study_key")
            if study_key is not None and known is not None and known != study_key:
                raise ConfigError(
                    f"--study: the store {store.path} holds the runs of another study named "
                    f"{sweep.study_name!r} (its database was recreated, or it lives in another "
                    "--storage); give a new --study, or delete those runs first"
                )
            return int(row["id"])
        if row is not None:
            raise ConfigError(
                f"--study: {sweep.study_name!r} already names a {row['kind']} group in "
                f"{store.path}; give the sweep another name"
            )
        cursor = db.execute(
            "INSERT INTO groups(name, kind, recipe, config, created) VALUES (?, 'sweep', ?, ?, ?)",
            (sweep.study_name, sweep.recipe.name, json.dumps(config, default=str), _now()),
        )
        return int(cursor.lastrowid)


def _now() -> str:
    from mlenv.track.store import now

    return now()


# ----------------------------------------------------------------------------------------------
# A worker: claim a trial, run it as an mlenv run, tell the study; until N trials are done.


class TrialReporter:
    """A run tracker: each epoch's ``metric`` goes to the Optuna trial, and when the pruner says
    so the run ends at once with status ``pruned``."""

    def __init__(self, trial: Any, metric: str, pruner: str) -> None:
        self.trial = trial
        self.metric = metric
        self.pruner = pruner
        # steps an adopted trial reported before its worker died: a resumed run replays them
        self.reported = set(trial.storage.get_trial(trial._trial_id).intermediate_values)

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlenv.track.session import EndRun

        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        if step not in self.reported:
            self.trial.report(value, step)
            self.reported.add(step)
        if self.trial.should_prune():
            raise EndRun(
                f"pruned by the {self.pruner} pruner at epoch {step} ({self.metric} {value:.6g})",
                "pruned",
            )

    def close(self) -> None:
        pass


class Heartbeat:
    """Record the trial's heartbeat every ``HEARTBEAT_S`` seconds while it runs."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is only a later one
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class Claim:
    trial: Any
    adopted: bool = False


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _orphaned_here(frozen: Any) -> bool:
    """A running trial whose worker was a process of this host that is gone."""
    from mlenv.track.store import pid_alive

    worker = frozen.user_attrs.get("worker") or {}
    return worker.get("host") == socket.gethostname() and not pid_alive(int(worker.get("pid", 0)))


def _counts(frozen: Any) -> bool:
    """Whether a trial takes one of the study's N places: finished, pruned, running, waiting,
    or failed by its own run (a trial failed by a lost heartbeat is replaced)."""
    from optuna.trial import TrialState

    if frozen.state == TrialState.FAIL:
        return "outcome" in frozen.user_attrs
    return True


def claim_trial(study: Any, storage: Any, sweep: Sweep) -> Claim | None:
    """Under the study lock: adopt a trial orphaned on this host, else take an enqueued one, or
    ask for a new one while fewer than N trials count; ``None`` when the study is complete."""
    optuna = _quiet_optuna()
    from optuna.trial import TrialState

    with study_lock(storage, sweep.study_name) as locked:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        # a claim names its worker before the lock is released: a trial seen without one
        # lost its worker between the two (killed while claiming)
        orphan = next(
            (t for t in running if _orphaned_here(t) or (locked and "worker" not in t.user_attrs)),
            None,
        )
        if orphan is not None:
            trial = optuna.trial.Trial(study, orphan._trial_id)  # what study.ask() builds
            trial.set_user_attr("worker", _me())
            storage.record_heartbeat(orphan._trial_id)
            return Claim(trial, adopted=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)  # enqueued: always run
        if sum(1 for t in trials if _counts(t)) >= sweep.trials and not waiting:
            return None
        with warnings.catch_warnings():  # the heartbeat is ours (Heartbeat), not optimize()'s
            warnings.simplefilter("ignore")
            trial = study.ask()
        trial.set_user_attr("worker", _me())
        storage.record_heartbeat(trial._trial_id)
        return Claim(trial)


@dataclass
class Outcome:
    number: int
    state: str  # complete | pruned | failed
    value: float | None
    run_id: str | None
    detail: str


def best_value(history: list[dict[str, Any]], metric: str, mode: str) -> float | None:
    """The best finite ``metric`` over the epochs (what the run's best checkpoint holds)."""
    values = [
        float(row[metric])
        for row in history
        if isinstance(row.get(metric), int | float) and math.isfinite(row[metric])
    ]
    if not values:
        return None
    return min(values) if mode == "min" else max(values)


def _store_history(store: Any, run_id: str) -> list[dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for m in store.metrics(run_id):
        if not m["name"].startswith("step/"):
            rows.setdefault(m["step"], {})[m["name"]] = m["value"]
    return [rows[k] for k in sorted(rows)]


def run_trial(claim: Claim, study: Any, storage: Any, sweep: Sweep, group_id: int) -> Outcome:
    """Train the trial's run (or resume it, or only read it when it had finished) and tell the
    study its value, or that it was pruned or failed. Ctrl-C and SIGTERM leave the trial
    running, with its run's checkpoint, for the next worker to resume."""
    from optuna.trial import TrialState

    from mlenv.track.session import EndRun
    from mlenv.track.store import Store

    trial = claim.trial
    number = trial.number
    member = f"trial={number}"
    params = {p.name: p.suggest(trial) for p in sweep.space}
    store = Store(sweep.store_path)
    try:
        previous = [r for r in store.runs(group_id=group_id) if r["member"] == member]
        run = previous[-1] if previous else None
        if run is not None and run["status"] in ("finished", "diverged", "pruned"):
            # the run ended but its worker died before telling the study
            return _tell_from_store(study, trial, run, store, sweep)
        resume_dir = None
        if run is not None:
            folder = store.run_folder(run)
            if folder is not None and (folder / "checkpoints" / "last.pt").is_file():
                resume_dir = folder
            else:  # nothing to resume: the trial starts again, as one run
                try:
                    folder = store.deletable_folder(run)
                except MlenvError:
                    folder = None  # not provably this run's: the folder stays, the record goes
                store.delete_run(run["id"], folder)
    finally:
        store.close()
    reporter = TrialReporter(trial, sweep.metric, sweep.pruner)
    try:
        with Heartbeat(storage, trial._trial_id):
            result = _train(sweep, params, group_id, member, reporter, resume_dir)
    except EndRun as exc:
        run_id = _run_id_of(sweep, group_id, member)
        _tell(
            study, trial, state=TrialState.PRUNED, attrs={"outcome": exc.status, "run_id": run_id}
        )
        return Outcome(number, "pruned", None, run_id, str(exc))
    except MlenvError as exc:
        trainer = sys.modules.get("mlenv.train.trainer")
        if trainer is not None and isinstance(exc, trainer.TrainingInterrupted):
            raise  # the trial stays running: the next command resumes its checkpoint
        run_id = _run_id_of(sweep, group_id, member)
        _tell(study, trial, state=TrialState.FAIL, attrs={"outcome": "failed", "run_id": run_id})
        return Outcome(number, "failed", None, run_id, f"failed: {exc}")
    except KeyboardInterrupt:
        raise
    except BaseException:
        run_id = _run_id_of(sweep, group_id, member)
        _tell(study, trial, state=TrialState.FAIL, attrs={"outcome": "error", "run_id": run_id})
        raise
    run_id = Path(result.run_dir).name if result.run_dir else None
    status = result.summary.get("status", "finished")
    value = best_value(result.history, sweep.metric, sweep.mode)
    if status != "finished" or value is None:
        _tell(study, trial, state=TrialState.FAIL, attrs={"outcome": status, "run_id": run_id})
        why = status if status != "finished" else f"no finite {sweep.metric}"
        return Outcome(number, "failed", None, run_id, why)
    _tell(study, trial, value, attrs={"outcome": status, "run_id": run_id})
    resumed = " (resumed)" if resume_dir is not None else ""
    return Outcome(number, "complete", value, run_id, f"{sweep.metric} {value:.6g}{resumed}")


def _train(
    sweep: Sweep,
    params: dict[str, Any],
    group_id: int,
    member: str,
    reporter: TrialReporter,
    resume_dir: Path | None,
) -> Any:
    import yaml

    from mlenv.config import recipe_from_config, resolve
    from mlenv.train.run import run_recipe

    sink = io.StringIO()  # a trial's tables and summary: the run folder and the store keep them
    if resume_dir is None:
        cfg = resolve(sweep.recipe, sweep.trial_args(params), "mlenv sweep")
        return run_recipe(cfg, out=sink, group_id=group_id, member=member, trackers=[reporter])
    base = yaml.safe_load((resume_dir / "config.yaml").read_text())
    checkpoint = str(resume_dir / "checkpoints" / "last.pt")
    args = ["--resume", checkpoint, "--progress", "false"]
    cfg = resolve(recipe_from_config(base["recipe"]), args, "mlenv sweep", base=base)
    return run_recipe(
        cfg, run_dir=resume_dir, out=sink, group_id=group_id, member=member, trackers=[reporter]
    )


def _tell_from_store(study: Any, trial: Any, run: dict, store: Any, sweep: Sweep) -> Outcome:
    from optuna.trial import TrialState

    attrs = {"outcome": run["status"], "run_id": run["id"]}
    if run["status"] == "pruned":
        _tell(study, trial, state=TrialState.PRUNED, attrs=attrs)
        return Outcome(trial.number, "pruned", None, run["id"], "pruned (recorded before)")
    value = best_value(_store_history(store, run["id"]), sweep.metric, sweep.mode)
    if run["status"] != "finished" or value is None:
        _tell(study, trial, state=TrialState.FAIL, attrs=attrs)
        return Outcome(trial.number, "failed", None, run["id"], f"{run['status']} (before)")
    _tell(study, trial, value, attrs=attrs)
    return Outcome(trial.number, "complete", value, run["id"], "finished before; value told")


def _tell(
    study: Any, trial: Any, value: float | None = None, *, state: Any = None, attrs: dict
) -> None:
    for key, item in attrs.items():
        if item is not None:
            trial.set_user_attr(key, item)
    study.tell(trial, value, state=state, skip_if_finished=True)


def _run_id_of(sweep: Sweep, group_id: int, member: str) -> str | None:
    from mlenv.track.store import Store

    store = Store(sweep.store_path)
    try:
        runs = [r for r in store.runs(group_id=group_id) if r["member"] == member]
    finally:
        store.close()
    return runs[-1]["id"] if runs else None


def open_sweep(sweep: Sweep) -> tuple[Any, Any, int]:
    """The storage, the study (created or loaded and checked) and the store's group."""
    from mlenv.track.store import Store

    storage = open_storage(sweep.storage_url)
    study = open_study(sweep, storage)
    store = Store(sweep.store_path)
    try:
        group_id = sweep_group(store, sweep, study.user_attrs.get("mlenv_key"))
    finally:
        store.close()
    return storage, study, group_id


def run_worker(sweep: Sweep, label: str = "") -> list[Outcome]:
    """Claim and run trials until the study has its N; returns what this worker did. Each
    trial is one line (``label`` first)."""
    storage, study, group_id = open_sweep(sweep)
    done: list[Outcome] = []
    while True:
        claim = claim_trial(study, storage, sweep)
        if claim is None:
            break
        outcome = run_trial(claim, study, storage, sweep, group_id)
        done.append(outcome)
        params = "  ".join(f"{k}={v}" for k, v in claim.trial.params.items())
        adopted = " (adopted)" if claim.adopted else ""
        print(
            f"{label}trial {outcome.number}{adopted}: {outcome.state:8s} {outcome.detail}  "
            f"[{params}]  run {outcome.run_id or '-'}",
            flush=True,
        )
    return done


class WorkerProcesses:
    """``count`` more processes of ``mlenv sweep`` (each ``--spawned``: no checks, no report)
    on the same study, their lines relayed with the prefix ``[wN]``. Ctrl-C in the terminal
    reaches every worker (each saves its trial's checkpoint and leaves it to a later command).

    >>> others = WorkerProcesses(["tabular-binary", "--space", "s.yaml", "--trials", "20"], 1)  # doctest: +SKIP
    >>> run_worker(sweep, label="[w1] "); others.wait()  # doctest: +SKIP
    """

    def __init__(self, child_argv: list[str], count: int, first: int = 2) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "mlenv.cli", "sweep", *child_argv, "--spawned"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            for _ in range(count)
        ]
        self.readers = [
            threading.Thread(target=self._relay, args=(p, f"[w{i}] "), daemon=True)
            for i, p in enumerate(self.procs, start=first)
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _relay(proc: subprocess.Popen, prefix: str) -> None:
        for line in proc.stdout:
            print(prefix + line, end="", flush=True)

    def wait(self) -> int:
        """Wait for every worker; the worst exit status (0 when all succeeded)."""
        try:
            codes = [p.wait() for p in self.procs]
        except KeyboardInterrupt:  # the terminal's SIGINT reached the workers too
            codes = [p.wait(timeout=120) for p in self.procs]
            raise
        finally:
            for reader in self.readers:
                reader.join(timeout=5)
        return max(codes, key=lambda c: (c != 0, abs(c)), default=0)


# ----------------------------------------------------------------------------------------------
# Reading a study: mlenv sweep show.


def load_study(name: str, url: str) -> Any:
    import sqlalchemy

    optuna = _quiet_optuna()
    with contextlib.suppress(sqlalchemy.exc.ArgumentError):  # open_storage says what is wrong
        parsed = sqlalchemy.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
            raise ConfigError(
                f"sweep show: no study database at {parsed.database}; give --storage URL "
                "(or --runs-dir DIR) where the sweep ran"
            )
    storage = open_storage(url, heartbeat=False)
    names = optuna.study.get_all_study_names(storage)
    if name not in names:
        known = ", ".join(names) or "none"
        raise ConfigError(
            f"sweep show: no study {name!r} in {shown_url(url)} (studies: {known}); "
            "give --storage URL (or --runs-dir DIR) where the sweep ran"
        )
    return optuna.load_study(study_name=name, storage=storage)


def summary_lines(sweep: Sweep) -> list[str]:
    """The study's state after a command: trial counts and the best trial."""
    study = load_study(sweep.study_name, sweep.storage_url)
    counts = trial_counts(study)
    shown = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    lines = [f"study {sweep.study_name}: {sum(counts.values())} trials ({shown})"]
    best = best_trials(study, 1)
    if best:
        t = best[0]
        lines.append(
            f"best: trial {t.number}, {sweep.metric} {t.value:.6g}, run "
            f"{t.user_attrs.get('run_id', '-')}; flags " + " ".join(_quoted(param_flags(t.params)))
        )
    lines.append(f"`mlenv sweep show {sweep.study_name}` prints importances and draws the plots")
    return lines


def trial_counts(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def best_trials(study: Any, top: int) -> list[Any]:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.direction.name == "MAXIMIZE"
    return sorted(complete, key=lambda t: t.value, reverse=reverse)[:top]


def show(study_name: str, url: str, out: Path | None, top: int = 5) -> dict[str, Any]:
    """Print the best trials, the best trial's flags and the parameter importances, and write
    the optimisation history and parallel-coordinate plots into ``out``."""
    study = load_study(study_name, url)
    plan = study.user_attrs.get("mlenv", {})
    metric = plan.get("metric", "value")
    counts = trial_counts(study)
    total = sum(counts.values())
    shown = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    print(f"study {study_name} ({shown_url(url)}): {total} trials ({shown or 'none'})")
    if plan:
        print(
            f"recipe {plan['recipe']}; {metric} ({plan['mode']}); flags "
            f"{' '.join(plan['overrides']) or '(none)'}"
        )
    best = best_trials(study, top)
    result: dict[str, Any] = {"counts": counts, "best": [], "importances": {}, "plots": []}
    if not best:
        print("no finished trial yet")
        return result
    names = list(best[0].params)
    rows = [
        {
            "trial": t.number,
            metric: t.value,
            **{n: t.params.get(n) for n in names},
            "epochs": max(t.intermediate_values, default=None),
            "run": t.user_attrs.get("run_id", ""),
        }
        for t in best
    ]
    from mlenv.track.report import format_table

    print(
        f"\nbest {len(best)} trials ({'lowest' if plan.get('mode') == 'min' else 'highest'} first):"
    )
    print(format_table(rows))
    result["best"] = rows
    print("\nbest trial's flags: " + " ".join(_quoted(param_flags(best[0].params))))
    importances = param_importances(study)
    result["importances"] = importances
    if importances:
        print("\nparameter importances (fANOVA, share of the variance of the objective):")
        width = max(len(k) for k in importances)
        for name, share in importances.items():
            print(f"  {name.ljust(width)}  {share:.3f}")
    else:
        print("\nparameter importances: need 2+ finished trials whose parameters differ")
    if out is not None:
        result["plots"] = write_plots(study, out, metric)
        print("\nplots: " + ", ".join(str(p) for p in result["plots"]))
    return result


def _quoted(flags: list[str]) -> list[str]:
    import shlex

    return [shlex.quote(f) for f in flags]


def param_importances(study: Any) -> dict[str, float]:
    optuna = _quiet_optuna()
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = (
        {n for n in complete[0].params if len({repr(t.params.get(n)) for t in complete}) > 1}
        if complete
        else set()
    )
    if len(complete) < 2 or not varied:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def write_plots(study: Any, out: Path, metric: str = "Objective Value") -> list[Path]:
    """``optimization_history.png`` and ``parallel_coordinate.png`` (Optuna's matplotlib
    plots), each written to a temporary name and renamed."""
    from mlenv.track.plots import _pyplot, save_figure

    _pyplot()  # the Agg backend, before Optuna imports pyplot
    import optuna.visualization.matplotlib as vis

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, plot in zip(
            PLOTS, (vis.plot_optimization_history, vis.plot_parallel_coordinate), strict=True
        ):
            ax = plot(study, target_name=metric)
            figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            figure.set_size_inches(8, 4.8)
            written.append(save_figure(figure, out / name))
    return written


def plots_only(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but the plots ``sweep show`` writes (so a second
    ``show`` replaces them without ``--force``)."""
    return folder.is_dir() and all(p.name in PLOTS and p.is_file() for p in folder.iterdir())
