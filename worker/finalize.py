"""The end of every job, in either mode: master playlist, poster, state completed.

Each mode's last tasks (per-rung encodes, chunked joins) call ``finalize_when_done`` after writing
their rung's record; whichever finishes last sees every rung done and publishes ``finalize``. Two
may both see it and both publish: finalize is idempotent (a second run finds nothing to do).
"""

from __future__ import annotations

import logging
from pathlib import Path

from celery import Task

from config.retry_policy import retry_options
from config.settings import get_settings
from core.errors import PermanentError
from core.events import emit
from core.job_model import Manifest, Rendition
from core.layout import (
    RENDITIONS,
    master_key,
    poster_key,
    rendition_playlist_uri,
    segments_prefix,
)
from core.manifest import JobStore
from core.storage import Storage
from worker import encoder, host_cache
from worker.app import app
from worker.hls import CONTENT_TYPES, Variant, master_playlist
from worker.intermediates import remove_intermediates_quietly
from worker.replay_rule import reopen_if_replayed
from worker.task_support import load_job, workdir

logger = logging.getLogger(__name__)


def rendition_to_do(
    task: Task, jobs: JobStore, manifest: Manifest, rendition: str, queue: str | None = None
) -> dict[str, Rendition] | None:
    """The opening of either mode's last task for a rung: the job's planned rungs by name, or None
    when a duplicate delivery (a lost ack, a re-run probe) finds the rung already completed, in
    which case finalize is published again should this rung have been the last."""
    planned = {r.name: r for r in manifest.renditions}
    if rendition not in planned:
        raise PermanentError(
            "bad_arguments", f"job {manifest.job_id} has no rendition {rendition!r}"
        )
    reopen_if_replayed(task, jobs, manifest)
    done = jobs.load_rendition(manifest.job_id, rendition)
    if done is not None and done.state == "completed":
        finalize_when_done(jobs, manifest.job_id, list(planned), queue)
        return None
    return planned


def rendition_done(
    jobs: JobStore,
    job_id: str,
    record: Rendition,
    playlist: str,
    names: list[str],
    queue: str | None = None,
) -> None:
    """The fan-in of either mode: a rung is complete (its record written, its event out), then
    finalize once it was the last."""
    jobs.save_rendition(job_id, record)
    emit(
        app,
        "rendition.completed",
        job_id=job_id,
        rendition=record.name,
        worker=record.worker,
        playlist=playlist,
        size_bytes=record.size_bytes,
    )
    finalize_when_done(jobs, job_id, names, queue)


def finalize_when_done(
    jobs: JobStore, job_id: str, names: list[str], queue: str | None = None
) -> None:
    """Publish finalize when every rung is done.

    Each encode (or join) writes its record before it looks at the others, so whichever finishes
    last sees every rung done. ``queue`` overrides the route (chunked joins use the encode queue:
    see config/topology.py).
    """
    records = [jobs.load_rendition(job_id, name) for name in names]
    if all(r is not None and r.state == "completed" for r in records):
        options = {"queue": queue} if queue else {}
        finalize.apply_async(args=[job_id], **options)


@app.task(name="encodeq.finalize", bind=True, **retry_options())
def finalize(self: Task, job_id: str) -> None:
    """Master playlist, poster, state completed. Idempotent: a second run finds nothing to do."""
    storage = Storage()
    jobs = JobStore(storage)
    load_job(jobs, job_id)
    manifest = jobs.load(job_id)
    assert manifest is not None
    reopen_if_replayed(self, jobs, manifest)
    if manifest.state == "completed":
        return
    if not manifest.renditions or any(r.state != "completed" for r in manifest.renditions):
        logger.info("finalize(%s): not every rendition is done yet; nothing to do", job_id)
        return
    master_uri = _publish_master(storage, manifest)
    poster_uri = _publish_poster(storage, job_id, manifest.renditions)
    # In either mode: a job that went per rung when its split could not meet the plan may have
    # chunks uploaded already.
    remove_intermediates_quietly(storage, job_id)
    job = jobs.load_job(job_id)  # again: a failure handler may have written it meanwhile
    assert job is not None
    # Every rendition is done, so the job is: a failure recorded meanwhile (a late duplicate
    # that failed after its rung was completed by another copy) goes to the history.
    jobs.reopen(job)
    job.master_playlist, job.poster = master_uri, poster_uri
    job.state, job.error = "completed", None
    jobs.save(job)
    host_cache.job_ended(job_id)  # here now; every other host on the event
    emit(app, "job.completed", job_id=job_id, master_playlist=master_uri)


def _publish_master(storage: Storage, manifest: Manifest) -> str:
    """The master playlist over every rung; its URI."""
    probe = manifest.source.probe
    variants = [
        Variant(
            uri=rendition_playlist_uri(r.name),
            bandwidth=r.bandwidth or 0,
            average_bandwidth=r.average_bandwidth or 0,
            width=r.width,
            height=r.height,
            codecs=r.codecs or "",
            frame_rate=probe.frame_rate if probe else None,
        )
        for r in manifest.renditions
    ]
    return storage.put_bytes(
        RENDITIONS,
        master_key(manifest.job_id),
        master_playlist(variants).encode(),
        CONTENT_TYPES[".m3u8"],
    )


def _publish_poster(storage: Storage, job_id: str, renditions: list[Rendition]) -> str:
    """A frame a third of the way in, from the top rung's segment there; its URI."""
    top = max(renditions, key=lambda r: r.width * r.height)
    with workdir(job_id) as folder:
        segments = sorted(storage.list_keys(RENDITIONS, segments_prefix(job_id, top.name)))
        segment: Path = folder / "segment.ts"
        storage.download(RENDITIONS, segments[len(segments) // 3], segment)
        poster = encoder.poster(segment, folder / "poster.jpg", get_settings())
        return storage.put_file(RENDITIONS, poster_key(job_id), poster, "image/jpeg")
