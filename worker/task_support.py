"""What every task of a job needs, in either mode: its manifest (never trusting the id it was
sent), the replay rule (a replayed message reopens a failed job), and a scratch folder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Task

from config.topology import REPLAY_COUNT_HEADER
from core.errors import PermanentError
from core.events import emit
from core.job_model import JobState, Manifest, is_job_id
from core.manifest import JobStore
from worker import host_cache, scratch


def load_job(jobs: JobStore, job_id: str) -> Manifest:
    """The job of a message, or a permanent error: the id is never trusted to build a key."""
    if not is_job_id(job_id):
        raise PermanentError("bad_arguments", f"not a job id: {job_id!r}")
    manifest = jobs.load_job(job_id)
    if manifest is None:
        raise PermanentError("unknown_job", f"job {job_id} has no manifest")
    return manifest


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


@contextmanager
def workdir(job_id: str) -> Iterator[Path]:
    """The task's scratch folder, in the per-user private work folder (worker/scratch.py): locked
    while the task runs, removed after it, swept at worker start if the task died. Cache entries
    the task reads are hard links of its own beside it (worker/host_cache.py), so no eviction or
    drop can pull them away; as it leaves, an ended job's cache entries go."""
    try:
        with scratch.folder(job_id) as folder, host_cache.reading(folder / "inputs"):
            task = folder / "task"
            task.mkdir()
            yield task
    finally:
        host_cache.task_left(job_id)
