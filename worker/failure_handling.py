"""What happens when a task or a message fails: record why, fail the job, dead-letter, never ack.

Celery is configured with late acks and ``task_acks_on_failure=False``, so a failed task's message
is rejected without requeue and RabbitMQ dead-letters it. This module adds what Celery does not:

* ``RecordingRequest`` writes a failure record (type, message, traceback tail, attempts, worker)
  and marks the job failed with its error code. It runs in the worker's main process, which also
  sees the failures the pool child cannot report itself: a SIGKILLed child (``WorkerLostError``).
* ``DeadLetteringConsumer`` rejects (dead-letters) messages Celery would otherwise ack and forget:
  bodies that do not decode; and records why unknown or malformed messages were rejected.

What cannot be written while S3 is down waits in the outbox (worker/outbox.py) until the janitor
flushes it (``flush_outbox``).
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery import Celery
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded, WorkerLostError
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu.asynchronous import get_event_loop

from config.retry_policy import TRANSIENT_ERRORS
from config.settings import get_settings
from core import metrics
from core.errors import PermanentError
from core.events import emit
from core.failures import FailureRecord, message_key, save_failure, tail
from core.intermediates import remove_live
from core.job_model import ErrorInfo, is_job_id
from core.manifest import JobStore
from core.storage import Storage
from worker import outbox
from worker.task_runs import kind_of, publish, run_fields

logger = logging.getLogger(__name__)

#: Kinds of outbox entry (worker/outbox.py) this module writes and knows how to apply.
FAILURE_RECORD = "failure_record"
JOB_FAILURE = "job_failure"

#: How long, and how often, to look whether Celery's reject of a failed task went out.
REJECT_LOOKS = 50
REJECT_LOOK_EVERY_S = 0.1


def error_code(exc: BaseException) -> str:
    """The stable code a failure is known by, in the manifest and in the DLQ inspector."""
    if isinstance(exc, PermanentError):
        return exc.code
    if isinstance(exc, SoftTimeLimitExceeded):
        return "timeout"
    if isinstance(exc, WorkerLostError):
        return "worker_lost"
    if isinstance(exc, TRANSIENT_ERRORS):
        return "retries_exhausted"
    if isinstance(exc, TypeError):
        return "bad_arguments"
    return "internal_error"


def _deliveries(message: Any) -> int:
    """1 for a first delivery; quorum queues count returns in x-delivery-count."""
    headers = getattr(message, "headers", None) or {}
    return int(headers.get("x-delivery-count", 0) or 0) + 1


def _save(record: FailureRecord) -> None:
    try:
        save_failure(Storage(), record)
    except Exception as exc:  # storage down: kept, and written once it answers
        logger.warning("failure record of %s kept in the outbox: %s", record.task_id, exc)
        outbox.spool(FAILURE_RECORD, record.model_dump(mode="json"))


def _fail_job(
    app: Celery, job_id: str | None, rendition: str | None, code: str, message: str
) -> None:
    if not job_id:
        return
    failure = {"job_id": job_id, "rendition": rendition, "code": code, "message": message}
    try:
        _apply_job_failure(app, failure)
    except Exception as exc:  # storage down: the job fails once it answers
        logger.warning("failure of job %s kept in the outbox: %s", job_id, exc)
        outbox.spool(JOB_FAILURE, failure)


def flush_outbox(app: Celery) -> int:
    """Write what failures could not write while S3 was down (the janitor calls this); events
    go out through ``app``."""
    return outbox.flush(
        {
            FAILURE_RECORD: lambda doc: save_failure(Storage(), FailureRecord.model_validate(doc)),
            JOB_FAILURE: lambda doc: _apply_job_failure(app, doc),
        }
    )


def _apply_job_failure(app: Celery, failure: dict[str, Any]) -> None:
    """Mark the job failed (it keeps its first error) and its rung failed; a completed job and
    a completed rung are left alone (a late duplicate failing after another copy finished)."""
    job_id, rendition = failure["job_id"], failure.get("rendition")
    code, message = failure["code"], failure["message"]
    jobs = JobStore(Storage())
    job = jobs.load_job(job_id)
    if job is None or job.state == "completed":
        return
    jobs.set_state(job_id, "failed", ErrorInfo(code=code, message=message))
    # Each failure, not only the first: a sibling task may have published its live playlist
    # after the first one's cleanup, and fails in its turn (a source cut short fails them all).
    remove_live(jobs.storage, job_id)
    if rendition:
        record = jobs.load_rendition(job_id, rendition)
        if record is not None and record.state != "completed":
            record.state = "failed"
            jobs.save_rendition(job_id, record)
    # No cache drop here: every host (this one too) drops the job's entries on this event, once
    # no task of the job runs there (worker/host_cache.py), never under a sibling still working.
    emit(app, "job.failed", job_id=job_id, rendition=rendition, code=code, message=message)


class RecordingRequest(Request):
    """A Celery request that leaves a failure record before Celery rejects its message, and fails
    the job once the broker has taken that reject."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False):
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, Reject) and isinstance(exc.reason, BaseException):
            exc = exc.reason  # Celery's retry wraps a failed re-publish in a Reject
        failure: FailureRecord | None = None
        if not isinstance(exc, Retry):
            try:
                failure = self._record(exc, exc_info)
                _save(failure)  # first: the dead letter can be explained as soon as it lands
            except Exception:
                logger.exception("failure handling of %s failed", self.id)
        result = super().on_failure(exc_info, send_failed_event, return_ok)
        if failure is not None and failure.dead_lettered:
            self._after_reject(failure)
        if failure is not None and isinstance(exc, WorkerLostError):
            metrics.run_lost(kind_of(self.name), failure.code, failure.dead_lettered)
            try:
                self._announce_lost(failure)
            except Exception:  # the timeline is a view: never in the failure handling's way
                logger.exception("could not announce the lost run of %s", self.id)
        return result

    def _announce_lost(self, failure: FailureRecord) -> None:
        """End the timeline's bar of a run whose pool process died under it (no handler there
        could: worker/task_events.py): ``lost`` when its message goes back to the queue."""
        consumed = getattr(self.task.app.amqp.queues, "consume_from", None) or {}
        request = {
            "hostname": self.hostname,
            "pid": self.worker_pid,
            "delivery_info": self.delivery_info,
            "retries": self.request_dict.get("retries"),
            "queues": list(consumed),
        }
        fields = run_fields(self.task, self.name, self.id, self.args, self.kwargs, request)
        outcome = "dead" if failure.dead_lettered else "lost"
        fields.update(outcome=outcome, code=failure.code, reason=failure.message[:300])
        publish(self.task.app, "task.finished", fields)

    def _after_reject(self, failure: FailureRecord) -> None:
        """Fail the job once the reject has reached RabbitMQ, and only then.

        Celery sends the reject from its event loop, soon after this handler (in no set order
        with other callbacks), so look again a little later until the message says it was
        rejected. With the connection gone (a broker restart) the reject never leaves, the message
        will be delivered again, and the job is not over: then nothing is marked.
        """
        hub = get_event_loop()

        def fail_job_when_rejected(looks_left: int) -> None:
            if self._message.acknowledged:
                _fail_job(
                    self.task.app, failure.job_id, self._rendition(), failure.code, failure.message
                )
            elif hub is not None and looks_left > 0:
                hub.call_later(REJECT_LOOK_EVERY_S, fail_job_when_rejected, looks_left - 1)

        fail_job_when_rejected(REJECT_LOOKS)

    def _rendition(self) -> str | None:
        args = list(self.args or [])
        return args[1] if len(args) > 1 and isinstance(args[1], str) else None

    def _record(self, exc: BaseException, exc_info: Any) -> FailureRecord:
        deliveries = _deliveries(self._message)
        requeued = isinstance(exc, WorkerLostError) and self.task.reject_on_worker_lost
        # A requeued message dies in the broker once it has been delivered more than the limit
        # allows; this worker saw its last delivery, so it is the one that can say why.
        last_delivery = deliveries > get_settings().delivery_limit
        args = list(self.args or [])
        job_id = args[0] if args and isinstance(args[0], str) else self.kwargs.get("job_id")
        code = error_code(exc)
        if requeued and last_delivery:
            code = "delivery_limit"
        message = exc.message if isinstance(exc, PermanentError) else str(exc) or type(exc).__name__
        return FailureRecord(
            task_id=self.id,
            task=self.name,
            job_id=job_id if is_job_id(job_id) else None,
            code=code,
            exc_type=type(exc).__name__,
            message=message,
            traceback_tail=tail(exc_info.traceback or ""),
            attempts=int(self.request_dict.get("retries") or 0) + 1,
            deliveries=deliveries,
            worker=self.hostname,
            queue=self.delivery_info.get("routing_key"),
            dead_lettered=not requeued or last_delivery,
        )


class DeadLetteringConsumer(Consumer):
    """Celery's consumer, but a message it cannot use is dead-lettered with a record, never acked.

    Celery already rejects (without requeue) unknown, malformed and invalid messages; we add the
    failure record. It *acks* a body that does not decode: that one we reject ourselves.
    """

    def _record(self, message: Any, code: str, exc: BaseException | None, detail: str) -> None:
        headers = getattr(message, "headers", None) or {}
        task = headers.get("task")
        # a task name we do not run is anyone's text: not a label
        known = isinstance(task, str) and task in self.app.tasks
        metrics.message_dead_lettered(kind_of(task) if known else "unknown", code)
        _save(
            FailureRecord(
                task_id=message_key(headers, message.body),
                task=task if isinstance(task, str) else None,
                code=code,
                exc_type=type(exc).__name__ if exc else "MalformedMessage",
                message=detail,
                deliveries=_deliveries(message),
                worker=self.hostname,
                queue=(message.delivery_info or {}).get("routing_key"),
            )
        )

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        logger.error("dead-lettering a message that does not decode: %r", exc)
        detail = f"body does not decode as {message.content_type!r}: {exc}"
        self._record(message, "undecodable", exc, detail)
        message.reject_log_error(logger, self.connection_errors)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._record(message, "malformed", None, "not a Celery task message (no task header)")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = (getattr(message, "headers", None) or {}).get("task")
        self._record(message, "unknown_task", exc, f"no task named {name!r} is registered")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._record(message, "invalid_message", exc, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)
