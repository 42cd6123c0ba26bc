"""Why each message died: the broker's ``x-death`` (where) joined with the failure record (why).

Records are written by the worker (worker/failure_handling.py) under the message key; a message
without one (storage was down, or the broker killed it: TTL, overflow, a crash loop nobody could
report) is explained from what the broker and the body say.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from core.failures import FailureRecord, load_failure
from core.storage import Storage
from dlq_inspector.message import DeadLetter

#: Parallel record lookups: a large DLQ should not wait on one S3 round trip after another.
LOOKUP_THREADS = 8

BROKER_REASONS = {
    "delivery_limit": "delivered more often than the delivery limit allows: a crash loop "
    "(each consumer holding it died or requeued it)",
    "expired": "its time to live ran out in the queue",
    "maxlen": "the queue was full and dropped it from the head",
    "rejected": "rejected by a consumer",
}


def load_records(
    messages: Iterable[DeadLetter], storage: Storage | None = None
) -> dict[str, FailureRecord]:
    """Failure records by message key, for those messages that have one."""
    keys = sorted({m.key for m in messages})
    if not keys:
        return {}
    storage = storage or Storage()

    def load(key: str) -> FailureRecord | None:
        try:
            return load_failure(storage, key)
        except Exception:  # a record that does not parse is no record
            return None

    with ThreadPoolExecutor(LOOKUP_THREADS) as pool:
        found = dict(zip(keys, pool.map(load, keys), strict=True))
    return {k: v for k, v in found.items() if v is not None}


def why(message: DeadLetter, record: FailureRecord | None) -> str:
    """One line: the exception from the record, else what the broker and the body tell."""
    if record is not None:
        return f"{record.code}: {record.exc_type}: {record.message}"
    if message.reason == "rejected":
        if message.decode_error:
            return f"malformed: {message.decode_error}"
        if message.task is None:
            return "malformed: not a Celery task message (no task header)"
        return "rejected by a consumer; no failure record was written"
    return BROKER_REASONS.get(message.reason, f"dead-lettered ({message.reason})")


@dataclass
class Row:
    """What ``list`` shows of one message."""

    id: str
    task: str | None
    job_id: str | None
    reason: str
    queue: str
    died_at: str | None
    exc_type: str | None
    code: str | None
    error: str | None
    why: str
    replays: int
    key: str

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def row(message: DeadLetter, record: FailureRecord | None) -> Row:
    return Row(
        id=message.id,
        task=message.task,
        job_id=message.job_id,
        reason=message.reason,
        queue=message.died_in,
        died_at=message.died_at.isoformat() if message.died_at else None,
        exc_type=record.exc_type if record else None,
        code=record.code if record else None,
        error=record.message if record else None,
        why=why(message, record),
        replays=message.replay_count,
        key=message.key,
    )
