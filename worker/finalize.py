"""The end of every job, in either mode: master playlist, poster, state completed.

Each mode's last tasks (per-rung encodes, chunked joins) call ``finalize_when_done`` after writing
their rung's record; whichever finishes last sees every rung done and publishes ``finalize``. Two
may both see it and both publish: finalize is idempotent (a second run finds nothing to do).
"""

from __future__ import annotations

import logging
from pathlib import Path

from celery import Task

from config.ladder import RenditionPlan, size_order
from config.retry_policy import retry_options
from config.settings import get_settings
from core.errors import PermanentError
from core.events import emit
from core.intermediates import remove_if_ended, remove_intermediates_quietly
from core.job_model import Manifest, Rendition
from core.layout import (
    RENDITIONS,
    job_prefix,
    live_master_key,
    master_key,
    poster_key,
    rendition_playlist_uri,
    segments_prefix,
)
from core.manifest import JobStore
from core.storage import Storage, parse_uri
from worker import encoder, host_cache
from worker.app import app
from worker.hls import CONTENT_TYPES, Variant, master_playlist
from worker.replay_rule import reopen_if_replayed
from worker.task_support import load_job, workdir

logger = logging.getLogger(__name__)


def rendition_to_do(
    task: Task, jobs: JobStore, manifest: Manifest, rendition: str
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
        finalize_when_done(jobs, manifest.job_id, list(planned))
        return None
    return planned


def rendition_done(
    jobs: JobStore,
    job_id: str,
    record: Rendition,
    playlist: str,
    names: list[str],
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
    finalize_when_done(jobs, job_id, names)


def finalize_when_done(jobs: JobStore, job_id: str, names: list[str]) -> None:
    """Publish finalize when every rung is done.

    Each encode (or join) writes its record before it looks at the others, so whichever finishes
    last sees every rung done.
    """
    records = [jobs.load_rendition(job_id, name) for name in names]
    if all(r is not None and r.state == "completed" for r in records):
        finalize.apply_async(args=[job_id])


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
    # In either mode: a job that went per rung after its chunks began (a chunk no decode could
    # give its frames) may have chunk outputs uploaded already. The live playlists go after the
    # master that named them was replaced.
    remove_intermediates_quietly(storage, job_id)
    job = jobs.load_job(job_id)  # again: a failure handler may have written it meanwhile
    assert job is not None
    # Every rendition is done, so the job is: a failure recorded meanwhile (a late duplicate
    # that failed after its rung was completed by another copy) goes to the history.
    jobs.reopen(job)
    job.master_playlist, job.poster = master_uri, poster_uri
    job.state, job.error = "completed", None
    jobs.save(job)
    # Again, now that the job says it ended: what a late copy of a task wrote since the first
    # removal (core/intermediates.py: the finalizer's half of the fence).
    remove_intermediates_quietly(storage, job_id)
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


def rung_playable(
    storage: Storage, jobs: JobStore, manifest: Manifest, rung: Rendition, uri: str, folder: Path
) -> None:
    """A rung plays while its job still encodes (a live playlist growing, a whole-source encode
    done, or a chunked join): the job's live master lists it with the others playable so far,
    its record says so, and ``rendition.playable`` goes out."""
    current = jobs.load(manifest.job_id)  # with its rendition records
    rung.live_playlist = uri
    if current is not None and not current.finished:
        probe = manifest.source.probe
        assert probe is not None
        rung.codecs = rung.codecs or encoder.codecs_of(folder, probe.has_audio, get_settings())
        # first: a record that says it plays finds the live master naming it
        publish_live_master(storage, current, rung)
        remove_if_ended(jobs, manifest.job_id)  # it may have ended since ``current``
    jobs.save_rendition(manifest.job_id, rung)
    emit(
        app,
        "rendition.playable",
        job_id=manifest.job_id,
        rendition=rung.name,
        worker=rung.worker,
        playlist=uri,
    )


def publish_live_master(storage: Storage, current: Manifest, rung: Rendition) -> str:
    """The master playlist while the job encodes (its own key: finalize publishes the finished
    one beside it): ``rung`` and every rung already playable, lowest first. Two rungs playable
    at once may each write it without the other: the next one to play lists both. Bandwidths
    are the rungs' caps (nothing measured yet)."""
    probe = current.source.probe
    assert probe is not None
    audio_kbps = get_settings().audio_bitrate_k if probe.has_audio else 0
    others = [r for r in current.renditions if r.name != rung.name and r.codecs]
    playable = [(r, r.live_playlist or r.playlist) for r in others] + [(rung, rung.live_playlist)]
    variants = []
    for r, playlist in sorted(playable, key=lambda p: size_order(p[0])):
        if playlist is None:
            continue
        plan = RenditionPlan(r.name, r.width, r.height, r.video_kbps)
        variants.append(
            Variant(
                uri=parse_uri(playlist)[1].removeprefix(job_prefix(current.job_id)),
                bandwidth=(plan.maxrate_kbps + audio_kbps) * 1000,
                average_bandwidth=(plan.video_kbps + audio_kbps) * 1000,
                width=r.width,
                height=r.height,
                codecs=r.codecs or "",
                frame_rate=probe.frame_rate,
            )
        )
    body = master_playlist(variants).encode()
    key = live_master_key(current.job_id)
    return storage.put_bytes(RENDITIONS, key, body, CONTENT_TYPES[".m3u8"])


def _publish_poster(storage: Storage, job_id: str, renditions: list[Rendition]) -> str:
    """A frame a third of the way in, from the top rung's segment there; its URI."""
    top = max(renditions, key=lambda r: r.width * r.height)
    with workdir(job_id) as folder:
        segments = sorted(storage.list_keys(RENDITIONS, segments_prefix(job_id, top.name)))
        segment: Path = folder / "segment.ts"
        storage.download(RENDITIONS, segments[len(segments) // 3], segment)
        poster = encoder.poster(segment, folder / "poster.jpg", get_settings())
        return storage.put_file(RENDITIONS, poster_key(job_id), poster, "image/jpeg")
