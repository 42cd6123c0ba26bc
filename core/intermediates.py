"""A job's intermediate objects: what chunked mode stores under ``uploads/<job>/chunks/`` (each
rung's encoded chunks, the audio) on the way to its renditions, and what a player follows while
the job encodes: each rung's live playlist (``live.m3u8``) and the live master; the finished
job's master names each rung's finished playlist instead.

They belong to the job, not to a mode: a chunked job that went per rung midway has some too. They
go when the job completes (worker/finalize.py), when it is cancelled (uploader/cancel.py, and the
janitor for what a task still uploaded after that), or when a failed job's replay window has
passed (worker/janitor.py); until then a replayed message finds what it needs. A failed job's
live playlists go at once, with each failure (worker/failure_handling.py): they would promise a
player segments that never come.

A copy of a task still running when its job ended (a duplicate delivery, a worker cut off from
the broker whose task ran on) may write an intermediate after that cleanup. Each end of a job
(finalize, a failure, a cancel) saves the job's state first and removes after; each writer of one
looks at the job's state after its write and removes them itself if the job ended
(``remove_if_ended``). Whichever order the two run in, nothing is left.
"""

from __future__ import annotations

import logging

from core.layout import (
    LIVE_PLAYLIST_NAME,
    RENDITIONS,
    UPLOADS,
    chunks_prefix,
    job_prefix,
    live_master_key,
)
from core.manifest import JobStore
from core.storage import Storage

logger = logging.getLogger(__name__)


def remove_intermediates(storage: Storage, job_id: str) -> int:
    """Delete the job's intermediate objects: its chunks, live playlists and live master; how
    many there were."""
    return storage.remove_prefix(UPLOADS, chunks_prefix(job_id)) + remove_live(storage, job_id)


def remove_live(storage: Storage, job_id: str) -> int:
    """Delete what a player follows while the job encodes: every rung's live playlist and the
    live master. A job that completed names its finished playlists; one that failed or was
    cancelled will not grow, and a player must not wait for segments that never come (a replay
    that reopens it publishes them again)."""
    removed = storage.remove_prefix(RENDITIONS, live_master_key(job_id))
    for key in list(storage.list_keys(RENDITIONS, job_prefix(job_id))):
        if key.rsplit("/", 1)[-1] == LIVE_PLAYLIST_NAME:
            removed += storage.remove_prefix(RENDITIONS, key)
    return removed


def remove_intermediates_quietly(storage: Storage, job_id: str) -> None:
    """``remove_intermediates``, best effort: a leftover costs storage, never correctness, so a
    failure here must not fail the job that is being completed."""
    try:
        removed = remove_intermediates(storage, job_id)
        logger.info("job %s: removed %d intermediate objects", job_id, removed)
    except Exception:
        logger.warning("job %s: could not remove its intermediate objects", job_id, exc_info=True)


def remove_if_ended(jobs: JobStore, job_id: str) -> None:
    """The writer's half of the fence above, called after writing an intermediate object: if the
    job ended meanwhile, what it must not keep goes (a completed or cancelled job keeps none; a
    failed one keeps its chunks for a replay, not its live playlists). Best effort, like
    ``remove_intermediates_quietly``: storage down leaves a stray object, never a broken job, and
    must not turn the task's own outcome into another."""
    try:
        job = jobs.load_job(job_id)
        if job is None or not job.finished:
            return
        storage = jobs.storage
        failed = job.state == "failed"
        removed = remove_live(storage, job_id) if failed else remove_intermediates(storage, job_id)
        logger.info("job %s ended while a copy ran: removed %d late objects", job_id, removed)
    except Exception:
        logger.warning("job %s: could not check for late intermediates", job_id, exc_info=True)
