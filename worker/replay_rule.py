"""The replay rule, worker side: a message replayed from the DLQ reopens its failed job.

The DLQ inspector (dlq_inspector/replay.py) decides where a dead letter goes back to and marks it
with its own header (``REPLAY_COUNT_HEADER``); a task that receives such a message for a failed job
puts the job back to work, so replaying what died, once its cause is fixed, completes the job.
"""

from __future__ import annotations

from celery import Task

from config.topology import REPLAY_COUNT_HEADER
from core.events import emit
from core.job_model import JobState, Manifest
from core.manifest import JobStore


def replayed(task: Task) -> bool:
    """Whether this message was replayed from the DLQ (the inspector's own header says so)."""
    headers = task.request.headers or {}
    return bool(headers.get(REPLAY_COUNT_HEADER))


def reopen_if_replayed(
    task: Task, jobs: JobStore, manifest: Manifest, state: JobState = "encoding"
) -> None:
    """A replayed message of a failed job puts the job back to work: once its cause was fixed,
    replaying what died must complete the job, in either mode. Other messages of a failed job
    still do their part (nothing is dropped), but only a replay reopens it."""
    if manifest.state == "failed" and replayed(task) and jobs.reopen(manifest, state):
        worker = task.request.hostname
        emit(
            task.app,
            "job.reopened",
            job_id=manifest.job_id,
            state=state,
            task=task.name,
            worker=worker,
        )
