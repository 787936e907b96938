"""One run's lifecycle: the folder, its lock, the store row, TensorBoard and trackers.

``RunSession`` is entered only after everything that can be checked was checked (configuration,
data, a resumed checkpoint), so a mistake never touches an existing run. On entry it creates the
folder (or reopens a resumed one), takes ``run.lock``, writes ``config.yaml`` and a ``summary.json``
naming the run and its status, and records the run in the store (an upsert that keeps a resumed
run's group, member and start time; rows logged after the checkpoint are dropped and TensorBoard
purges its events from the resumed step on). On exit, whatever happened, it closes TensorBoard and
trackers and records the final status: ``finished``, ``failed`` or ``interrupted`` (a signal;
the checkpoint was saved), or the status an :class:`EndRun` names (``pruned``). A process killed
outright leaves ``running`` with a dead pid, which the store reports as ``killed``.

>>> with RunSession(Run.plan("runs", "demo"), store, experiment="demo", config=flat) as session:  # doctest: +SKIP
...     trainer.run = session.run
...     summary = train()
...     session.finish(summary)
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from mlenv.errors import ConfigError, MlenvError
from mlenv.track.run import Run
from mlenv.track.store import pid_alive

LOCK_NAME = "run.lock"


class EndRun(MlenvError):
    """Raised inside a run (by a tracker's ``log``, once an epoch is recorded) to end it at once
    with its own ``status``: a sweep's pruner ends an unpromising trial as ``pruned``."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class RunLock:
    """``run.lock`` in the run folder, created exclusively; a lock left by a dead process on this
    host is taken over."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        """Take the lock: the file appears with its holder already written (a temporary file
        hard-linked to the lock's name, which fails if the name exists), so a reader never sees
        an empty lock."""
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        tmp = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(me))
        try:
            for _ in range(2):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    holder = self._holder()
                    if not holder:  # unreadable: treat as held
                        raise ConfigError(
                            f"run {self.path.parent.name} is locked ({self.path} cannot be read); "
                            "remove it if no process trains this run"
                        ) from None
                    same_host = holder.get("host") == me["host"]
                    alive = not same_host or pid_alive(int(holder.get("pid", 0)))
                    if alive and holder.get("pid") != me["pid"]:
                        raise ConfigError(
                            f"run {self.path.parent.name} is in use by process "
                            f"{holder.get('pid')} on {holder.get('host')} ({self.path}); "
                            "wait for it to end"
                        ) from None
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                self.held = True
                return
        finally:
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"{self.path}: could not take the run's lock")

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class RunSession:
    """Context manager for one run (new or resumed); see the module docstring."""

    def __init__(
        self,
        run: Run,
        store: Any = None,
        *,
        experiment: str,
        config: dict[str, Any],
        config_text: str = "",
        recipe: str | None = None,
        group_id: int | None = None,
        member: str | None = None,
        device: str | None = None,
        resumed: tuple[int, int] | None = None,
        trackers: list[Any] | None = None,
    ) -> None:
        self.run = run
        self.store = store
        self.experiment = experiment
        self.config = config
        self.config_text = config_text
        self.recipe = recipe
        self.group_id = group_id
        self.member = member
        self.device = device
        self.resumed = resumed  # (epoch, global_step) of the checkpoint resumed from
        self.trackers = trackers or []
        self.lock = RunLock(run.path)
        self.summary: dict[str, Any] | None = None
        self.status = "running"
        self.final_status = "finished"

    def __enter__(self) -> RunSession:
        run = self.run
        if self.resumed is None:
            run.path.mkdir(parents=True, exist_ok=False)
        elif not run.path.is_dir():
            raise ConfigError(f"{run.path}: the run folder to resume is gone")
        self.lock.acquire()
        try:
            if self.resumed is not None:
                run.purge_step = self.resumed[1] + 1
            run.store = self.store
            run.trackers = self.trackers
            if self.config_text:
                run.write_config(self.config_text)
            # a resumed run's old results (test metrics, tested weights) are no longer true
            start = {"status": "running"}
            if self.resumed is not None:
                start["resumed_at"] = {"epoch": self.resumed[0], "global_step": self.resumed[1]}
            run.write_summary(start)
            if self.store is not None:
                self.store.start_run(
                    run.id,
                    self.experiment,
                    self.config,
                    run_dir=str(run.path),
                    recipe=self.recipe,
                    group_id=self.group_id,
                    member=self.member,
                    device=self.device,
                )
                if self.resumed is not None:
                    self.store.truncate_metrics(run.id, *self.resumed)
                    self.store.clear_summary(run.id)
        except BaseException:
            self.lock.release()
            raise
        return self

    def finish(self, summary: dict[str, Any], status: str = "finished") -> None:
        """The run's final summary (written to ``summary.json`` and the store on exit) and its
        status when it ends without an error (``finished``, or ``diverged``)."""
        self.summary = summary
        self.final_status = status

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        from mlenv.train.trainer import TrainingInterrupted

        if exc is None:
            self.status = self.final_status
        elif isinstance(exc, EndRun):
            self.status = exc.status
        elif isinstance(exc, TrainingInterrupted | KeyboardInterrupt):
            self.status = "interrupted"
        else:
            self.status = "failed"
        try:
            self.run.close()
            if exc is None:
                summary = {**(self.summary or {}), "status": self.status}
            else:
                reason = str(exc) if isinstance(exc, MlenvError) else f"{type(exc).__name__}: {exc}"
                summary = {
                    **self.run.read_summary(),
                    **(self.summary or {}),
                    "status": self.status,
                    "stop_reason": reason or type(exc).__name__,
                }
            self.run.write_summary(summary)
            if self.store is not None:
                error = None if exc is None else summary["stop_reason"]
                self.store.finish_run(
                    self.run.id, self.status, summary if exc is None else None, error=error
                )
        finally:
            self.lock.release()
