"""What every task of a job needs, in either mode: its manifest (never trusting the id it was
sent) and a scratch folder. The replay rule is in worker/replay_rule.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import PermanentError
from core.job_model import Manifest, is_job_id
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
