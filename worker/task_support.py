"""What every task of a job needs: its manifest (never trusting the id it was sent), a scratch
folder, the probe's findings in the encoder's terms, and the fan-in to finalize."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Task

from config.topology import REPLAY_COUNT_HEADER
from core.errors import PermanentError
from core.manifest import JobState, JobStore, Manifest, SourceInfo, is_job_id
from core.storage import Storage
from worker import host_cache, scratch
from worker.app import app
from worker.events import emit
from worker.probe import ProbeResult


def job_store() -> JobStore:
    return JobStore(Storage())


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
        emit("job.reopened", job_id=manifest.job_id, state=state, task=task.name, worker=worker)


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


def probe_result(source: SourceInfo) -> ProbeResult:
    """The probe's findings, as recorded in the manifest, in the form the encoder takes."""
    return ProbeResult(
        container=source.container or "",
        duration=source.duration or 0.0,
        coded_width=source.coded_width or 0,
        coded_height=source.coded_height or 0,
        display_width=source.width or 0,
        display_height=source.height or 0,
        rotation=source.rotation,
        frame_rate=source.frame_rate or 0.0,
        video_codec=source.video_codec or "",
        has_audio=bool(source.has_audio),
    )


def maybe_finalize(jobs: JobStore, job_id: str, names: list[str], queue: str | None = None) -> None:
    """Publish finalize when every rung is done.

    Each encode (or join) writes its record before it looks at the others, so whichever finishes
    last sees every rung done. Two may both see it and both publish finalize: that is harmless.
    ``queue`` overrides the route (chunked joins use the encode queue: see config/topology.py).
    Published by name, so the modules of the two modes need not import each other.
    """
    records = [jobs.load_rendition(job_id, name) for name in names]
    if all(r is not None and r.state == "completed" for r in records):
        options = {"queue": queue} if queue else {}
        app.send_task("encodeq.finalize", args=[job_id], **options)
