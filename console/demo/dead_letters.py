"""What the demo's jobs left in the dead-letter queue: where each died and why.

Read with the DLQ inspector's own peek, which leaves every message in place and in order; the
failure record (why) is joined to the broker's ``x-death`` (where) by task id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kombu import Connection

from config.topology import DEAD_LETTER_QUEUE_NAME
from core.failures import FailureRecord, load_failure
from core.storage import Storage
from dlq_inspector.browse import peek


@dataclass
class DemoDeadLetter:
    """One DLQ message of this demo: where it died (x-death) and why (the failure record)."""

    job_id: str
    task: str
    task_id: str
    reason: str
    queue: str
    record: FailureRecord | None


def dead_letters(
    broker: Connection, storage: Storage, job_ids: list[str]
) -> tuple[list[DemoDeadLetter], int]:
    """This demo's dead letters, and how many other messages the DLQ holds."""
    messages = peek(broker, DEAD_LETTER_QUEUE_NAME)
    mine = [
        DemoDeadLetter(
            job_id=m.job_id,
            task=m.task or "?",
            task_id=m.key,
            reason=m.reason,
            queue=m.died_in,
            record=load_failure(storage, m.key),
        )
        for m in messages
        if m.job_id in job_ids
    ]
    return mine, len(messages) - len(mine)


def wait_for_dead_letters(
    broker: Connection, storage: Storage, job_ids: list[str], expected_job: str, wait_s: float
) -> tuple[list[DemoDeadLetter], int]:
    """The job is marked failed just before its message is rejected: give the dead letter time."""
    deadline = time.monotonic() + wait_s
    while True:
        dead, others = dead_letters(broker, storage, job_ids)
        if any(d.job_id == expected_job for d in dead) or time.monotonic() > deadline:
            return dead, others
        time.sleep(0.3)
