"""The recent task runs: the dashboard's timeline, one record per run of a task on a node.

Fed by the workers' ``task.started`` and ``task.finished`` events (worker/task_events.py) through
the live feed, so a page opened mid-encode (``GET /api/timeline``) shows what ran before it. A run
is one delivery of a message to one pool process: a retry runs the same task id again, and so
does a redelivery, each as a run of its own. A run whose worker died stays ``running`` here: the
page calls it lost once the same task id starts again elsewhere (its redelivery).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

#: Runs kept (the oldest go first): minutes of a busy fleet, a bounded answer.
KEEP_RUNS = 500
#: The fields a run takes from its events as they are.
RUN_FIELDS = ("task", "job_id", "label", "worker", "worker_hostname", "queue", "lesson")
#: What a finish event adds.
FINISH_FIELDS = ("countdown", "code", "reason", "runtime_s")


@dataclass
class TaskRun:
    task_id: str
    worker: str | None
    pid: int | None
    started_at: str
    task: str | None = None
    job_id: str | None = None
    label: str | None = None
    worker_hostname: str | None = None
    queue: str | None = None
    #: The lesson whose scratch vhost ran it (console/learn/event_relay.py), else None.
    lesson: str | None = None
    redelivered: bool = False
    retries: int = 0
    finished_at: str | None = None
    #: running, ok, retry, dead, failed, cancelled, lost (worker/task_events.py)
    outcome: str = "running"
    countdown: float | None = None
    code: str | None = None
    reason: str | None = None
    runtime_s: float | None = None

    @property
    def key(self) -> str:
        """One run: the page builds the same key from a ``task.started`` event."""
        return f"{self.task_id}|{self.worker}|{self.pid}|{self.started_at}"

    def as_json(self) -> dict[str, Any]:
        return {"run": self.key, **asdict(self)}


class Timeline:
    """The last ``keep`` runs, in the order they started; thread-safe, JSON-ready."""

    def __init__(self, keep: int = KEEP_RUNS) -> None:
        self.keep = keep
        self._runs: OrderedDict[str, TaskRun] = OrderedDict()
        self._lock = threading.Lock()

    def apply(self, event: dict[str, Any]) -> TaskRun | None:
        """Apply a ``task.started`` or ``task.finished`` event; the run it concerns."""
        kind, task_id = event.get("event"), event.get("task_id")
        if kind not in ("task.started", "task.finished") or not isinstance(task_id, str):
            return None
        with self._lock:
            if kind == "task.started":
                run = self._start(task_id, event, str(event.get("time") or ""))
            else:
                run = self._open_run(task_id, event) or self._start(task_id, event, _began(event))
                run.finished_at = str(event.get("time") or "") or None
                run.outcome = str(event.get("outcome") or "ok")
                for name in FINISH_FIELDS:
                    if event.get(name) is not None:
                        setattr(run, name, event[name])
            self._trim()
            return run

    def _start(self, task_id: str, event: dict[str, Any], started_at: str) -> TaskRun:
        pid = event.get("pid") if isinstance(event.get("pid"), int) else None
        run = TaskRun(task_id, _text(event.get("worker")), pid, started_at)
        for name in RUN_FIELDS:
            setattr(run, name, _text(event.get(name)))
        run.redelivered = bool(event.get("redelivered"))
        run.retries = int(event.get("retries") or 0)
        self._runs.pop(run.key, None)  # the same start announced twice: one run, the latest
        self._runs[run.key] = run
        return run

    def _open_run(self, task_id: str, event: dict[str, Any]) -> TaskRun | None:
        """The run a finish ends: the latest still open of this task id on the same process."""
        for run in reversed(self._runs.values()):
            if (
                run.task_id == task_id
                and run.outcome == "running"
                and run.worker == event.get("worker")
                and run.pid == event.get("pid")
            ):
                return run
        return None

    def _trim(self) -> None:
        while len(self._runs) > self.keep:
            self._runs.popitem(last=False)

    def runs(self) -> list[dict[str, Any]]:
        """Every run kept, oldest first."""
        with self._lock:
            return [run.as_json() for run in self._runs.values()]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _began(event: dict[str, Any]) -> str:
    """When a run whose start was missed began: its finish time less its runtime, if known."""
    finished = str(event.get("time") or "")
    runtime = event.get("runtime_s")
    try:
        began = datetime.fromisoformat(finished) - timedelta(seconds=float(runtime))
    except (TypeError, ValueError):
        return finished
    return began.isoformat(timespec="milliseconds")
