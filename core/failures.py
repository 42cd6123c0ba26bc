"""Failure records: *why* a task died, joined by task id with the broker's ``x-death`` (*where*).

Written by the worker whenever a task fails for good (or its worker is lost), to
``failures/<sha256 of the task id>.json``. The task id comes from the message, so it is whatever a
publisher wrote (slashes, ``..``, ``audit/...``, a kilobyte of text): it never becomes a key itself.
The DLQ inspector reads them; nothing else depends on them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, Field

from core.job_model import now_iso
from core.layout import FAILURES, failure_record_key
from core.storage import Storage

TRACEBACK_TAIL_LINES = 15


class FailureRecord(BaseModel):
    task_id: str
    task: str | None = None
    job_id: str | None = None
    #: Stable error code: an input error's code, ``timeout``, ``worker_lost``, ``malformed``...
    code: str
    exc_type: str
    message: str
    traceback_tail: str = ""
    #: Runs of this task: Celery retries + 1.
    attempts: int = 1
    #: Broker deliveries of this message so far (quorum queues' x-delivery-count + 1).
    deliveries: int = 1
    worker: str | None = None
    queue: str | None = None
    #: False when the broker gets the message back (a lost worker, requeued until the limit).
    dead_lettered: bool = True
    time: str = Field(default_factory=now_iso)


def tail(text: str, lines: int = TRACEBACK_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def message_key(headers: dict[str, Any] | None, body: bytes | str | None) -> str:
    """Who a message is: its Celery task id, or a digest of its body when it has none."""
    task_id = (headers or {}).get("id")
    if isinstance(task_id, str) and task_id:
        return task_id
    raw = body.encode() if isinstance(body, str) else (body or b"")
    return "body-" + hashlib.sha256(raw).hexdigest()[:32]


def save_failure(storage: Storage, record: FailureRecord) -> str:
    return storage.put_json(
        FAILURES, failure_record_key(record.task_id), record.model_dump(mode="json")
    )


def load_failure(storage: Storage, task_id: str) -> FailureRecord | None:
    doc = storage.get_json(FAILURES, failure_record_key(task_id))
    return None if doc is None else FailureRecord.model_validate(doc)
