"""Cancelling a job: the twin of submitting one (uploader/submit.py), for the CLI and the web.

What happens, in order: the cancellation is recorded in its own object (core/manifest.py: no task
that saves the job afterwards can undo it) and the job's state becomes ``cancelled``; the
``job.cancelled`` event goes out, on which every worker kills the job's ffmpeg processes
(worker/housekeeping.py); the job's intermediates are removed. Its tasks still in a queue are
acked without running when they come up, and a task whose ffmpeg was killed ends without a retry or
a dead letter (worker/app.py): a cancelled job leaves nothing behind in the queues.
"""

from __future__ import annotations

from core.celery_app import publisher
from core.events import emit
from core.intermediates import remove_intermediates_quietly
from core.job_model import Manifest, is_job_id
from core.manifest import JobStore
from core.storage import Storage


class CancelError(Exception):
    """The job cannot be cancelled: ``code`` is ``unknown_job`` or ``already_finished``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def cancel(job_id: str, storage: Storage | None = None, by: str = "cli") -> Manifest:
    """Cancel the job; the cancelled manifest, or CancelError saying why not."""
    storage = storage or Storage()
    jobs = JobStore(storage)
    manifest = jobs.load_job(job_id) if is_job_id(job_id) else None
    if manifest is None:
        raise CancelError("unknown_job", f"no job {job_id!r}")
    if manifest.finished:
        raise CancelError(
            "already_finished", f"job {job_id} is {manifest.state}: there is nothing to cancel"
        )
    jobs.cancel(manifest, by)
    emit(publisher(), "job.cancelled", job_id=job_id, by=by)
    remove_intermediates_quietly(storage, job_id)
    return manifest
