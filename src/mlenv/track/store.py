"""The experiment store: one SQLite file (WAL mode) indexing every run, its configuration, its
per-epoch metrics and its final summary, and the groups that repeats and cross-validations make.

Many processes may write at once (sweep workers, repeats): every write is one short transaction,
SQLite's busy timeout waits for the lock, and a run records its host and process id, so a run whose
process died without a word (SIGKILL, power loss) is shown as ``killed``, not ``running`` forever.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlenv.errors import MlenvError

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,              -- repeat | cv
    recipe TEXT NOT NULL,
    config TEXT NOT NULL,            -- JSON: the shared configuration and the plan (seeds, folds)
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    group_id INTEGER REFERENCES groups(id),
    member TEXT,                     -- seed=3, or repeat=0,fold=2: what pairs runs across groups
    run_dir TEXT,
    recipe TEXT,
    config TEXT NOT NULL,            -- JSON
    git_commit TEXT,
    versions TEXT,                   -- JSON
    device TEXT,
    host TEXT,
    pid INTEGER,
    start TEXT NOT NULL,
    end TEXT,
    status TEXT NOT NULL,            -- running | finished | failed | interrupted | killed
    error TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id, name, step);
-- the key of a metric row: a resumed run that replays a step overwrites it (metrics_key below)
CREATE TABLE IF NOT EXISTS summaries (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name)
);
"""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def git_commit(folder: str | Path = ".") -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    import platform

    import numpy
    import torch

    from mlenv import __version__

    return {
        "mlenv": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


MIN_PREFIX = 6  # characters of a run id that `runs show`/`runs delete` accept as a prefix


def _summary_run_id(path: Path) -> str | None:
    """The ``run_id`` that a run folder's ``summary.json`` names, or ``None``."""
    try:
        named = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return named.get("run_id") if isinstance(named, dict) else None


def _lock_holder(lock: Path) -> dict | None:
    """The process named by a run's ``run.lock`` when it may still be alive, else None."""
    try:
        holder = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": "?", "host": "?"}  # unreadable: assume held
    if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", 0))):
        return None
    return holder


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def best_first(runs: list[dict], metric: str, mode: str) -> list[dict]:
    """``runs`` ordered by their summary's ``metric``, the best first: the lowest for ``mode``
    ``min`` (a loss), the highest for ``max`` (an accuracy); runs without the metric (or with
    NaN, a diverged run) come last.

    >>> [r["id"] for r in best_first([{"id": "a", "summary": {"loss": 2.0}},
    ...     {"id": "b", "summary": {"loss": 1.0}}], "loss", "min")]
    ['b', 'a']
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode: accepts 'min' or 'max', got {mode!r}")
    sign = 1.0 if mode == "min" else -1.0

    def key(run: dict) -> tuple[bool, float]:
        value = run["summary"].get(metric)
        missing = value is None or math.isnan(value)
        return missing, 0.0 if missing else sign * value

    return sorted(runs, key=key)


class Store:
    """``Store(path)``: opens (and creates) the database; every method is one transaction."""

    def __init__(self, path: str | Path) -> None:
        from mlenv.errors import ConfigError

        self.path = Path(path)
        if self.path.is_dir():
            raise ConfigError(f"--store: {self.path} is a folder; give the database file's path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 60000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.executescript(SCHEMA)
            self._ensure_metric_key()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise ConfigError(
                f"--store: {self.path} cannot be used as the experiment store ({exc})"
            ) from None

    def _ensure_metric_key(self) -> None:
        """One row per (run, step, name). Stores written before this key existed may hold
        duplicates from replayed steps: the newest row of each key is kept."""
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'metrics_key'"
        ).fetchone()
        if exists:
            return
        with self.transaction() as db:
            db.execute(
                "DELETE FROM metrics WHERE rowid NOT IN "
                "(SELECT MAX(rowid) FROM metrics GROUP BY run_id, step, name)"
            )
            db.execute(
                "CREATE UNIQUE INDEX IF NOT EXISTS metrics_key ON metrics(run_id, step, name)"
            )

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so
        concurrent writers queue instead of failing half-way."""
        for attempt in range(20):
            try:
                self._db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- writing --------------------------------------------------------------------------------
    def experiment_id(self, name: str) -> int:
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO experiments(name, created) VALUES (?, ?)", (name, now())
            )
            return db.execute("SELECT id FROM experiments WHERE name = ?", (name,)).fetchone()[0]

    def create_group(self, name: str, kind: str, recipe: str, config: dict[str, Any]) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO groups(name, kind, recipe, config, created) VALUES (?, ?, ?, ?, ?)",
                (name, kind, recipe, json.dumps(config, default=str), now()),
            )
            return int(cursor.lastrowid)

    def start_run(
        self,
        run_id: str,
        experiment: str,
        config: dict[str, Any],
        *,
        run_dir: str | None = None,
        recipe: str | None = None,
        group_id: int | None = None,
        member: str | None = None,
        device: str | None = None,
    ) -> None:
        """Record a run as ``running``. For a run already in the store (a resume) this updates
        the row and keeps what the first start recorded: group, member and start time."""
        experiment_id = self.experiment_id(experiment)
        if run_dir is not None:
            run_dir = str(Path(run_dir).absolute())
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs(id, experiment_id, group_id, member, run_dir, recipe,"
                " config, git_commit, versions, device, host, pid, start, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')"
                " ON CONFLICT(id) DO UPDATE SET"
                " group_id = COALESCE(runs.group_id, excluded.group_id),"
                " member = COALESCE(runs.member, excluded.member),"
                " run_dir = excluded.run_dir, config = excluded.config,"
                " git_commit = excluded.git_commit, versions = excluded.versions,"
                " device = excluded.device, host = excluded.host, pid = excluded.pid,"
                " status = 'running', end = NULL, error = NULL",
                (
                    run_id,
                    experiment_id,
                    group_id,
                    member,
                    run_dir,
                    recipe,
                    json.dumps(config, default=str),
                    git_commit(),
                    json.dumps(versions()),
                    device,
                    socket.gethostname(),
                    os.getpid(),
                    now(),
                ),
            )

    def log_metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        rows = [
            (run_id, step, k, float(v)) for k, v in values.items() if isinstance(v, int | float)
        ]
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO metrics(run_id, step, name, value) VALUES (?, ?, ?, ?)",
                rows,
            )

    def log_step_metrics(self, run_id: str, rows: list[tuple[int, str, float]]) -> None:
        """Many ``(step, name, value)`` rows in one transaction (per-step values of an epoch)."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO metrics(run_id, step, name, value) VALUES (?, ?, ?, ?)",
                [(run_id, step, name, float(value)) for step, name, value in rows],
            )

    def clear_summary(self, run_id: str) -> None:
        """A resumed run's old summary no longer holds: its rows go until the run ends again."""
        with self.transaction() as db:
            db.execute("DELETE FROM summaries WHERE run_id = ?", (run_id,))

    def truncate_metrics(self, run_id: str, epoch: int, global_step: int) -> None:
        """On resume: drop rows logged after the checkpoint (epoch rows past ``epoch``, per-step
        rows past ``global_step``), which the resumed run will log again."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM metrics WHERE run_id = ? AND name NOT LIKE 'step/%' AND step > ?",
                (run_id, epoch),
            )
            db.execute(
                "DELETE FROM metrics WHERE run_id = ? AND name LIKE 'step/%' AND step > ?",
                (run_id, global_step),
            )

    def finish_run(
        self,
        run_id: str,
        status: str,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        rows = [
            (run_id, k, float(v))
            for k, v in (summary or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET status = ?, end = ?, error = ? WHERE id = ?",
                (status, now(), error, run_id),
            )
            if summary is not None:  # a new summary replaces the old one whole
                db.execute("DELETE FROM summaries WHERE run_id = ?", (run_id,))
            db.executemany(
                "INSERT OR REPLACE INTO summaries(run_id, name, value) VALUES (?, ?, ?)", rows
            )

    def delete_run(self, run_id: str, folder: str | Path | None = None) -> None:
        """Forget the run; with ``folder`` (from :meth:`deletable_folder`) remove that first, so
        a folder that cannot be removed leaves the run listed, never a folder nobody knows."""
        if folder is not None:
            shutil.rmtree(folder)
        with self.transaction() as db:
            db.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM summaries WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def deletable_folder(self, run: dict, force: bool = False) -> Path | None:
        """The folder to remove with ``run``, or ``None`` when it is already gone. Raises
        :class:`MlenvError` when removing it could lose what is not this run's: a folder whose
        ``summary.json`` does not name this run, or a run whose process may still be writing
        (``running`` on another host, or its process alive here) unless ``force``."""
        if run["status"] == "running" and not force:
            where = f"process {run['pid']} on {run['host']}"
            if run["host"] == socket.gethostname():
                where += ", still alive"
            raise MlenvError(
                f"run {run['id']} is running ({where}); stop it first, or pass --force "
                "to delete it anyway"
            )
        folder = self.run_folder(run)
        if folder is None or not (folder.exists() or folder.is_symlink()):
            return None
        if folder.is_symlink() or not folder.is_dir():
            raise MlenvError(
                f"not deleting {folder}: it is not a folder; remove it yourself if it is yours, "
                f"then `mlenv runs delete {run['id']}` forgets the run"
            )
        holder = _lock_holder(folder / "run.lock")
        if holder is not None and not force:
            raise MlenvError(
                f"run {run['id']} is being trained by process {holder.get('pid')} on "
                f"{holder.get('host')} ({folder / 'run.lock'}); stop it first, or pass --force"
            )
        named = _summary_run_id(folder / "summary.json")
        if named != run["id"]:
            found = "has no readable summary.json" if named is None else f"is run {named!r}"
            raise MlenvError(
                f"not deleting {folder}: it {found}, not run {run['id']}; remove it yourself "
                f"if it is this run's, then `mlenv runs delete {run['id']}` forgets the run"
            )
        return folder

    # -- reading --------------------------------------------------------------------------------
    def mark_dead_runs(self) -> None:
        """Runs still ``running`` whose process on this host is gone were killed."""
        host = socket.gethostname()
        rows = self._db.execute(
            "SELECT id, pid FROM runs WHERE status = 'running' AND host = ?", (host,)
        ).fetchall()
        dead = [r["id"] for r in rows if r["pid"] is not None and not pid_alive(r["pid"])]
        if dead:
            with self.transaction() as db:
                db.executemany(
                    "UPDATE runs SET status = 'killed' WHERE id = ? AND status = 'running'",
                    [(d,) for d in dead],
                )

    def runs(self, experiment: str | None = None, group_id: int | None = None) -> list[dict]:
        self.mark_dead_runs()
        query = (
            "SELECT runs.*, experiments.name AS experiment FROM runs "
            "JOIN experiments ON experiments.id = runs.experiment_id"
        )
        where, args = [], []
        if experiment is not None:
            where.append("experiments.name = ?")
            args.append(experiment)
        if group_id is not None:
            where.append("runs.group_id = ?")
            args.append(group_id)
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = [dict(r) for r in self._db.execute(query + " ORDER BY runs.start, runs.id", args)]
        summaries = self._summaries([r["id"] for r in rows])
        for row in rows:
            row["summary"] = summaries.get(row["id"], {})
        return rows

    def _summaries(self, run_ids: list[str]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for i in range(0, len(run_ids), 500):
            chunk = run_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for r in self._db.execute(
                f"SELECT run_id, name, value FROM summaries WHERE run_id IN ({marks})", chunk
            ):
                out.setdefault(r["run_id"], {})[r["name"]] = r["value"]
        return out

    def matching_runs(self, id_or_prefix: str) -> list[dict]:
        """The run with exactly this id, else every run whose id starts with it (a prefix of at
        least ``MIN_PREFIX`` characters; a shorter one matches nothing but the exact id)."""
        self.mark_dead_runs()
        query = (
            "SELECT runs.*, experiments.name AS experiment FROM runs JOIN experiments ON "
            "experiments.id = runs.experiment_id WHERE "
        )
        rows = self._db.execute(query + "runs.id = ?", (id_or_prefix,)).fetchall()
        if not rows and len(id_or_prefix) >= MIN_PREFIX:
            rows = self._db.execute(  # substr, not LIKE: '_' and '%' in the text are literal
                query + "substr(runs.id, 1, ?) = ? ORDER BY runs.start, runs.id",
                (len(id_or_prefix), id_or_prefix),
            ).fetchall()
        runs = [dict(r) for r in rows]
        summaries = self._summaries([r["id"] for r in runs])
        for run in runs:
            run["summary"] = summaries.get(run["id"], {})
        return runs

    def run(self, run_id: str) -> dict | None:
        """The run with this id or this unambiguous prefix (``MIN_PREFIX`` characters or more)."""
        runs = self.matching_runs(run_id)
        return runs[0] if len(runs) == 1 else None

    def find_run(self, id_or_prefix: str) -> dict:
        """Like :meth:`run`, but a miss raises :class:`MlenvError` saying why: no such run, a
        prefix too short, or an ambiguous prefix (with the candidates)."""
        runs = self.matching_runs(id_or_prefix)
        if len(runs) == 1:
            return runs[0]
        if not runs:
            short = (
                f" (a prefix needs at least {MIN_PREFIX} characters)"
                if len(id_or_prefix) < MIN_PREFIX
                else ""
            )
            raise MlenvError(
                f"no run {id_or_prefix!r} in {self.path}{short}; `mlenv runs list` shows the ids"
            )
        shown = "; ".join(f"{r['id']} ({r['experiment']}, {r['status']})" for r in runs[:10])
        more = f"; and {len(runs) - 10} more" if len(runs) > 10 else ""
        raise MlenvError(
            f"{id_or_prefix!r} matches {len(runs)} runs: {shown}{more}; give more of the id"
        )

    def run_folder(self, run: dict) -> Path | None:
        """The run's folder as an absolute path. Runs record it absolute; older rows hold it
        relative to where training started (``<runs_dir>/<experiment>/<run-id>``), which is
        read as ``<experiment>/<run-id>`` beside the store file (the default store is
        ``<runs_dir>/mlenv.db``), never relative to the current folder."""
        if not run.get("run_dir"):
            return None
        folder = Path(run["run_dir"])
        if folder.is_absolute():
            return folder
        parts = folder.parts
        if len(parts) < 2 or parts[-1] != run["id"]:
            return None
        return self.path.resolve().parent / parts[-2] / parts[-1]

    def metrics(self, run_id: str) -> list[dict]:
        return [
            dict(r)
            for r in self._db.execute(
                "SELECT step, name, value FROM metrics WHERE run_id = ? ORDER BY step, rowid",
                (run_id,),
            )
        ]

    def metric_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0])

    def group(self, name_or_id: str) -> dict | None:
        """A group by id, or the newest group with that name."""
        if name_or_id.isdigit():
            row = self._db.execute("SELECT * FROM groups WHERE id = ?", (int(name_or_id),))
        else:
            row = self._db.execute(
                "SELECT * FROM groups WHERE name = ? ORDER BY id DESC LIMIT 1", (name_or_id,)
            )
        found = row.fetchone()
        if found is None:
            return None
        group = dict(found)
        group["config"] = json.loads(group["config"])
        return group
