"""Submit a video: multipart upload under a key we choose, the manifest, the probe task.

The user's file name is data (kept in the manifest and, percent-encoded, in object metadata); it
never becomes part of a key, a path or a command line, so spaces, ``;``, ``$()`` or any Unicode in
a name are harmless.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from celery import Celery
from kombu.exceptions import OperationalError
from kombu.utils.functional import retry_over_time

from config.brokers import connect_retries
from config.retry_policy import BROKER_RETRY_INTERVALS, broker_retry
from config.settings import get_settings
from config.topology import PROBE_TASK, WORK_QUEUE_KEYS, declare_topology
from core.celery_app import publisher
from core.events import emit
from core.job_model import EncodeMode, ErrorInfo, Manifest, Priority, SourceInfo
from core.layout import UPLOADS, source_key
from core.manifest import JobStore
from core.queue_depths import queue_depths
from core.storage import Storage


class SubmitError(Exception):
    """The file cannot be submitted (missing, not a regular file, over the size limit)."""


class Busy(SubmitError):
    """Back-pressure: the work queues hold ``max_queued_tasks`` or more tasks waiting; nothing was
    stored, try again later."""


class BrokerUnavailable(SubmitError):
    """RabbitMQ did not take the job within ``broker_wait_s``; the job is marked failed."""


def publish_probe(job_id: str) -> None:
    """Declare the topology (so a job published before any worker ran is kept) and publish the
    probe with publisher confirms, waiting up to ``broker_wait_s`` for an unreachable broker.

    The whole connect-declare-publish is retried, not only the connect: a broker that goes away
    between the connect and the confirm (a restart) is waited for like one that was never there.
    Every attempt publishes the same task id, so a publish retried after RabbitMQ took it but
    before its confirm arrived is a duplicate delivery of one probe, which its claim absorbs
    (worker/probe_task.py), not a second probe.
    """
    app = publisher()
    task_id = uuid.uuid4().hex
    with app.connection_for_write() as connection:
        recoverable = (OperationalError, *connection.recoverable_connection_errors)
    retry_over_time(
        _publish_probe_once,
        recoverable,
        args=(app, job_id, task_id),
        **broker_retry(timeout=get_settings().broker_wait_s),
    )


def _publish_probe_once(app: Celery, job_id: str, task_id: str) -> None:
    """One attempt, each node of a failover list tried in turn (kombu moves down the list when a
    node refuses, or when the connection dies before the confirm)."""
    with app.connection_for_write() as connection:
        retries = connect_retries(get_settings().broker_url)
        connection.ensure_connection(max_retries=retries, **BROKER_RETRY_INTERVALS)
        declare_topology(connection)
        app.send_task(PROBE_TASK, args=[job_id], task_id=task_id, connection=connection)


def waiting_tasks() -> int | None:
    """Tasks waiting in the work queues (ready, not yet with a worker); None when the broker does
    not answer (the probe's publish then fails loudly on its own)."""
    with publisher().connection_for_read() as connection:
        errors = (OperationalError, *connection.connection_errors, *connection.channel_errors)
        try:
            connection.ensure_connection(max_retries=connect_retries(get_settings().broker_url))
            return sum(d.messages or 0 for d in queue_depths(connection, tuple(WORK_QUEUE_KEYS)))
        except errors:
            return None


def check_admission() -> None:
    """Busy when the queues are at their bound: an upload is refused before anything is stored,
    rather than queued behind a backlog without limit."""
    bound = get_settings().max_queued_tasks
    waiting = waiting_tasks()
    if bound and waiting is not None and waiting >= bound:
        raise Busy(
            f"the work queues hold {waiting} tasks waiting (the bound is {bound}): nothing was "
            "uploaded; try again when the workers have caught up"
        )


def check_file(path: Path) -> int:
    """The file's size, or SubmitError saying why it cannot be uploaded."""
    if not path.exists():
        raise SubmitError(f"{path}: no such file")
    if not path.is_file():
        raise SubmitError(f"{path}: not a regular file")
    size = path.stat().st_size
    limit = get_settings().max_upload_bytes
    if size > limit:
        raise SubmitError(f"{path}: {size} bytes is over the upload limit of {limit} bytes")
    return size


def submit(
    path: Path,
    storage: Storage | None = None,
    progress: Any = None,
    mode: EncodeMode | None = None,
    filename: str | None = None,
    priority: Priority = "normal",
) -> Manifest:
    """Upload ``path`` and queue its job; returns the queued manifest. ``mode`` picks chunked or
    per-rung encoding (None: the probe chooses from the source's length). ``filename`` is the
    user's name for the file when ``path`` is ours (a web upload's temp file). ``priority``: the
    lane of its encodes (worker/window.py)."""
    filename = filename or path.name
    size = check_file(path)
    check_admission()
    storage = storage or Storage()
    job_id = uuid.uuid4().hex
    uri = storage.put_file(
        UPLOADS,
        source_key(job_id, filename),
        path,
        metadata={"original-filename": quote(filename)},
        progress=progress,
    )
    manifest = Manifest(
        job_id=job_id,
        source=SourceInfo(uri=uri, filename=filename, size_bytes=size),
        mode=mode,
        priority=priority,
    )
    jobs = JobStore(storage)
    jobs.save(manifest)
    # Publisher confirms are on (broker_transport_options): this returns once RabbitMQ has the
    # task. Any error means it may not have: the job fails loudly rather than wait for ever (a
    # crash right here leaves it queued, which the workers' janitor finds: worker/janitor.py).
    try:
        publish_probe(job_id)
    except Exception as exc:
        unreachable = isinstance(exc, (OperationalError, OSError))
        code = "broker_unavailable" if unreachable else "publish_failed"
        error = ErrorInfo(code=code, message=f"could not queue the job: {exc!r}")
        jobs.set_state(job_id, "failed", error)
        message = f"{filename}: RabbitMQ did not take job {job_id} ({exc}); marked failed"
        raise BrokerUnavailable(message) from exc
    emit(
        publisher(),
        "job.queued",
        job_id=job_id,
        filename=filename,
        size_bytes=size,
        priority=priority,
    )
    return manifest
