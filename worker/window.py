"""A job's window: how many of its encode tasks wait in the queue or run at once, and the lane
(queue) they wait in.

Why: the encode queue is FIFO. A job that published all of its chunks at once would put a clip
uploaded a moment later behind every one of them. A job instead publishes its first ``window``
tasks (as many as the fleet has encode consumers, so one job alone still keeps every worker busy)
and each task, once its work is recorded, publishes the task ``window`` places after it: task k's
successor is k + window, one chain per slot. Another job's tasks published meanwhile wait behind
at most the window, not behind the whole job: jobs interleave.

At-least-once holds across the hand-over: the successor is published *before* the finished task is
acked (late acks). A worker that dies between recording its work and publishing the successor
never acks, so the task is delivered again; the redelivery finds its work done and publishes the
successor then. A successor already started (its record exists) is not published again.

The lane a job's tasks wait in is worker/lanes.py's.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

from celery import Task

from config.ladder import size_order
from config.settings import get_settings
from core.job_model import Manifest

logger = logging.getLogger(__name__)


def planned_window(consumers: int) -> int:
    """The window a job gets at its fan-out: ``ENCODEQ_JOB_WINDOW``, else the encode consumers
    (the same count its chunk plan was made for)."""
    return get_settings().job_window or consumers


def rungs_lowest_first(manifest: Manifest) -> list[str]:
    """The job's rungs in the order their work goes out: the smallest is playable soonest."""
    return [r.name for r in sorted(manifest.renditions, key=size_order)]


def publish_first(manifest: Manifest, count: int, publish: Callable[[int], None]) -> None:
    """Publish tasks 0 .. window-1 of the job's ``count`` (in the order they should run)."""
    for index in range(min(count, manifest.window or count)):
        publish(index)


def publish_after(
    task: Task,
    manifest: Manifest,
    done: int,
    count: int,
    started: Callable[[int], bool],
    publish: Callable[[int], None],
) -> None:
    """Task ``done`` finished: publish its successor unless there is none or it has started.
    Called before the finished task is acked, and again by any redelivery of it."""
    if manifest.window is None:  # a job fanned out whole (before windows): nothing follows
        return
    successor = done + manifest.window
    if successor >= count or started(successor):
        return
    if get_settings().drill_crash_before_successor and not _redelivered(task):
        # The worst moment: the work is recorded, the successor not yet published.
        logger.error("drill: dying before publishing task %d of job %s", successor, manifest.job_id)
        os.kill(os.getpid(), signal.SIGKILL)
    publish(successor)


def _redelivered(task: Task) -> bool:
    return bool((task.request.delivery_info or {}).get("redelivered"))
