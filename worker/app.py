"""The worker's Celery app: the shared one (core/celery_app.py) plus what only a consumer needs.

That is the task base class (the fault-injection drill), the failure-recording request and
consumer (worker/failure_handling.py; delayed delivery declared where it connects:
worker/topology_step.py), the task run events of the dashboard's timeline
(worker/task_events.py: Celery signals, connected by importing it), the bootsteps (topology
declared on every connection, host housekeeping, the janitor), and the task modules every worker
registers. Importing this module never connects anywhere. Flower loads it too (``celery --app
worker.app``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from config.settings import get_settings
from core.celery_app import create_app
from core.errors import PermanentError
from worker.cancellation import cancelled
from worker.failure_handling import RecordingRequest
from worker.housekeeping import Housekeeping
from worker.janitor import Janitor
from worker.task_events import mark_cancelled
from worker.topology_step import DeclareTopology, FailoverConsumer

logger = logging.getLogger(__name__)

#: Every module that defines tasks; a worker imports them all when it starts.
TASK_MODULES = [
    "worker.probe_task",
    "worker.modes.per_rung",
    "worker.modes.chunked.chunk_tasks",
    "worker.modes.chunked.join_task",
    "worker.modes.chunked.stragglers",
    "worker.finalize",
]


class EncodeqTask(Task):
    """Every task: failures recorded by ``RecordingRequest``; a drill can make any task fail; a
    task of a cancelled job (its first argument) is acked without running, or, cancelled while
    it ran (its ffmpeg killed: worker/cancellation.py), ends without a retry or a dead letter."""

    Request = RecordingRequest

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.name in get_settings().fail_tasks.split(","):
            raise PermanentError("injected_fault", f"{self.name} fails here on purpose (drill)")
        job_id = args[0] if args else None
        if cancelled(job_id):
            logger.info("%s of job %s: the job was cancelled; dropped", self.name, job_id)
            mark_cancelled(self)
            return None
        try:
            return super().__call__(*args, **kwargs)
        except Exception:
            if not cancelled(job_id):
                raise
            logger.info("%s of job %s: stopped, the job was cancelled", self.name, job_id)
            mark_cancelled(self)
            return None


def create_worker_app() -> Celery:
    app = create_app(task_cls=EncodeqTask)
    app.conf.update(worker_consumer=FailoverConsumer, include=TASK_MODULES)
    app.steps["consumer"].add(DeclareTopology)
    # Dead tasks' scratch folders swept, ended jobs' cache entries dropped on every host.
    app.steps["consumer"].add(Housekeeping)
    app.steps["worker"].add(Janitor)
    return app


app = create_worker_app()
