"""``task.started`` and ``task.finished``: every task run, from Celery's own signals (and the
Prometheus metrics of each run: core/metrics.py).

The dashboard's timeline draws a bar per run (worker, node, pool process, job, what it works on),
so competing consumers, retries, redeliveries and dead letters can be seen as they happen. The
handlers run in the pool process, inside Celery's trace of the task: ``task_prerun`` before the
body, ``task_postrun`` after it with the state Celery gave the run, whatever the body did. That
one signal tells every ending apart (``task_success``/``task_failure``/``task_retry`` each see
only one of them; ``task_rejected`` is the consumer's, for messages that never ran):

=========  ==============================================================================
outcome    what happened to the message
=========  ==============================================================================
ok         acked (SUCCESS; IGNORED: the task settled its message itself)
retry      published again with a countdown (RETRY, ``self.retry``/``autoretry_for``)
dead       rejected without requeue: dead-lettered (FAILURE, acks-on-failure off; or
           REJECTED, a ``Reject(requeue=False)``, e.g. a retry whose publish failed)
failed     rejected with requeue: it comes back (REJECTED with ``requeue=True``)
cancelled  its job was cancelled: acked without doing the work (worker/app.py marks it)
lost       its pool process died under it (sent by the main process: failure_handling.py)
=========  ==============================================================================

A pool process SIGKILLed with its whole worker sends nothing; the broker redelivers the message,
and the timeline sees the same task id start again, ``redelivered`` true.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import UTC, datetime
from typing import Any

from celery import Task, signals
from celery.exceptions import Reject, Retry

from core import metrics
from worker.failure_handling import error_code
from worker.task_runs import PREFIX, kind_of, publish, run_fields

#: Set on a run's request by worker/app.py when its job turned out to be cancelled.
CANCELLED = "encodeq_cancelled"
#: The longest reason an event carries (the failure record has the whole message).
MAX_REASON = 300

#: When each run of this process began (monotonic), by task id: the finish event says how long.
_began: dict[str, float] = {}


def mark_cancelled(task: Task) -> None:
    """The run in hand ends as ``cancelled`` rather than ``ok``."""
    with contextlib.suppress(Exception):
        setattr(task.request, CANCELLED, True)


def _fields(task: Task, task_id: str, args: Any, kwargs: Any) -> dict[str, Any]:
    request = task.request
    consumed = getattr(task.app.amqp.queues, "consume_from", None) or {}
    return run_fields(
        task,
        task.name,
        task_id,
        args,
        kwargs,
        {
            "hostname": request.hostname,
            "pid": os.getpid(),
            "delivery_info": request.delivery_info or {},
            "retries": request.retries,
            "queues": list(consumed),
        },
    )


def outcome_of(state: str, retval: Any, cancelled: bool) -> dict[str, Any]:
    """The ``outcome`` of a run Celery ended in ``state`` (``retval``: its result or exception),
    and what explains it: a retry's countdown, a dead letter's code and reason."""
    if state == "RETRY":
        found: dict[str, Any] = {"outcome": "retry"}
        if isinstance(retval, Retry):
            found["countdown"] = _seconds(retval.when)
            found["reason"] = str(retval.exc or retval.message or "")[:MAX_REASON]
        return found
    if state == "FAILURE":
        reason = getattr(retval, "message", None) or str(retval) or type(retval).__name__
        code = error_code(retval) if isinstance(retval, BaseException) else "internal_error"
        return {"outcome": "dead", "code": code, "reason": str(reason)[:MAX_REASON]}
    if state == "REJECTED":
        requeue = bool(getattr(retval, "requeue", False)) if isinstance(retval, Reject) else False
        reason = getattr(retval, "reason", None) or retval
        code = error_code(reason) if isinstance(reason, BaseException) else "rejected"
        outcome = "failed" if requeue else "dead"
        return {"outcome": outcome, "code": code, "reason": str(reason)[:MAX_REASON]}
    return {"outcome": "cancelled" if cancelled else "ok"}


def _seconds(when: Any) -> float | None:
    """A retry's delay: a countdown in seconds, or an ETA."""
    if isinstance(when, int | float):
        return float(when)
    if isinstance(when, datetime):
        aware = when if when.tzinfo else when.replace(tzinfo=UTC)
        return round(max(0.0, (aware - datetime.now(UTC)).total_seconds()), 3)
    return None


def _ours(task: Any) -> bool:
    return isinstance(task, Task) and str(task.name).startswith(PREFIX)


@signals.task_prerun.connect(weak=False)
def on_prerun(
    task_id: str = "", task: Any = None, args: Any = (), kwargs: Any = None, **_: Any
) -> None:
    """``task.started``, before the body runs."""
    if not _ours(task):
        return
    with contextlib.suppress(Exception):  # an event never fails a task
        _began[task_id] = time.monotonic()
        metrics.run_started(kind_of(task.name))
        publish(task.app, "task.started", _fields(task, task_id, args, kwargs))


@signals.task_postrun.connect(weak=False)
def on_postrun(
    task_id: str = "",
    task: Any = None,
    args: Any = (),
    kwargs: Any = None,
    retval: Any = None,
    state: str = "",
    **_: Any,
) -> None:
    """``task.finished``, once Celery settled the run (before the message is acked)."""
    if not _ours(task):
        return
    with contextlib.suppress(Exception):  # an event never fails a task
        began = _began.pop(task_id, None)
        runtime = None if began is None else round(time.monotonic() - began, 3)
        ending = outcome_of(state, retval, bool(getattr(task.request, CANCELLED, False)))
        # the metrics see the same outcomes as the timeline (core/metrics.py)
        metrics.run_finished(kind_of(task.name), ending["outcome"], ending.get("code"), runtime)
        fields = _fields(task, task_id, args, kwargs)
        fields.update(ending)
        if runtime is not None:
            fields["runtime_s"] = runtime
        publish(task.app, "task.finished", fields)
