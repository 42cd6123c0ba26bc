"""The tasks of a job: probe -> encode (one per rung, fanned out) -> finalize.

Chunked mode (worker/chunked_tasks.py) shares the start and the end: probe also cuts the source into
chunks and fans out one task per chunk instead of one per rung, and finalize publishes the result
of either mode.

Every task is safe to run twice (at-least-once delivery means it will be, sometimes): outputs go to
deterministic keys and are overwritten, and finalize only ever writes the same result again.
"""

from __future__ import annotations

import logging
import time

from celery import Task

from config.ladder import RenditionPlan, choose_renditions
from config.retry_policy import retry_options
from config.settings import get_settings
from core.errors import PUBLISH_ERRORS, EncodeError, PermanentError
from core.layout import (
    PLAYLIST_NAME,
    RENDITIONS,
    master_key,
    poster_key,
    rendition_prefix,
    segments_prefix,
)
from core.manifest import EncodeMode, JobStore, Rendition
from core.storage import Storage
from worker import chunked_tasks, encoder, host_cache, process
from worker.app import app
from worker.events import emit
from worker.hls import CONTENT_TYPES, Variant, master_playlist
from worker.probe import probe as probe_file
from worker.segment_upload import SegmentUploader
from worker.task_support import (
    load_job,
    maybe_finalize,
    probe_result,
    reopen_if_replayed,
    workdir,
)

logger = logging.getLogger(__name__)

#: How often a running encode writes its progress into its rendition record (events go faster).
RECORD_PROGRESS_EVERY_S = 5.0


def choose_mode(requested: EncodeMode | None, duration: float) -> EncodeMode:
    """The upload's choice, else chunked for sources long enough that it pays (bench_chunked)."""
    if requested is not None:
        return requested
    return "chunked" if duration >= get_settings().chunked_min_duration_s else "per-rung"


@app.task(name="encodeq.probe", bind=True, **retry_options())
def probe(self: Task, job_id: str) -> None:
    """ffprobe the upload under limits, pick the rungs (never upscale), fan out the encodes."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = load_job(jobs, job_id)
    reopen_if_replayed(self, jobs, manifest, "queued")
    if manifest.state == "failed" and manifest.error and manifest.error.code in PUBLISH_ERRORS:
        jobs.reopen(manifest, "queued")  # the upload's publish went through after all
    if manifest.state in ("completed", "failed"):
        return  # done, or failed (only a replay, above, puts a failed job back to work)
    if manifest.state != "queued" and manifest.probe_task not in (None, self.request.id):
        # Another probe claimed the job: the janitor re-published one for a job that looked
        # orphaned, and this is the original after all (or the reverse). One of them is enough;
        # a redelivery of the claimer (same task id) goes on.
        logger.info("probe(%s): claimed by probe %s; nothing to do", job_id, manifest.probe_task)
        return
    manifest.state, manifest.error, manifest.probe_task = "probing", None, self.request.id
    jobs.save(manifest)
    emit("job.probing", job_id=job_id, worker=self.request.hostname)
    settings = get_settings()
    with workdir(job_id) as folder:
        source = host_cache.local_source(storage, job_id, manifest.source.uri)
        result = probe_file(source, settings)
        manifest.mode = choose_mode(manifest.mode, result.duration)
        chunked = manifest.mode == "chunked"
        split_plan = chunked_tasks.plan(source, result) if chunked else None
        manifest.source = manifest.source.model_copy(
            update={
                "width": result.display_width,
                "height": result.display_height,
                "duration": result.duration,
                "coded_width": result.coded_width,
                "coded_height": result.coded_height,
                "rotation": result.rotation,
                "has_audio": result.has_audio,
                "video_codec": result.video_codec,
                "container": result.container,
                "frame_rate": result.frame_rate,
                "frames": sum(split_plan.chunks.frames) if split_plan else None,
            }
        )
        manifest.chunks = split_plan.chunks if split_plan else None
        plans = choose_renditions(result.display_width, result.display_height)
        manifest.renditions = [
            Rendition(name=p.name, width=p.width, height=p.height, video_kbps=p.video_kbps)
            for p in plans
        ]
        manifest.state = "encoding"
        jobs.save(manifest)
        emit(
            "job.encoding",
            job_id=job_id,
            renditions=[r.model_dump(mode="json") for r in manifest.renditions],
            source=manifest.source.model_dump(mode="json"),
        )
        if split_plan is not None:
            chunked_tasks.cut_and_fan_out(storage, jobs, manifest, source, split_plan, folder)
        else:
            for plan in plans:
                encode.apply_async(args=[job_id, plan.name])


@app.task(name="encodeq.encode", bind=True, **retry_options())
def encode(self: Task, job_id: str, rendition: str) -> None:
    """Encode one rung to HLS and upload it under deterministic keys; trigger finalize when last."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = load_job(jobs, job_id)
    planned = {r.name: r for r in manifest.renditions}
    if rendition not in planned:
        raise PermanentError("bad_arguments", f"job {job_id} has no rendition {rendition!r}")
    reopen_if_replayed(self, jobs, manifest)
    done = jobs.load_rendition(job_id, rendition)
    if done is not None and done.state == "completed":
        # A duplicate delivery (a lost ack, a re-run probe): the output is already there.
        maybe_finalize(jobs, job_id, list(planned))
        return
    record = planned[rendition].model_copy(
        update={
            "state": "encoding",
            "worker": self.request.hostname,
            "task_id": self.request.id,
            "progress": 0.0,
        }
    )
    jobs.save_rendition(job_id, record)
    emit("rendition.started", job_id=job_id, rendition=rendition, worker=record.worker)
    plan = RenditionPlan(record.name, record.width, record.height, record.video_kbps)
    settings = get_settings()
    last = {"event": 0.0, "record": time.monotonic()}

    def on_progress(p: encoder.Progress) -> None:
        now = time.monotonic()
        if now - last["event"] >= settings.progress_interval_s:
            last["event"] = now
            emit(
                "rendition.progress",
                job_id=job_id,
                rendition=rendition,
                worker=record.worker,
                progress=round(p.percent, 1),
                fps=p.fps,
                speed=p.speed,
            )
        if now - last["record"] >= RECORD_PROGRESS_EVERY_S:
            last["record"] = now
            record.progress = round(p.percent, 1)
            jobs.save_rendition(job_id, record)

    source_info = probe_result(manifest.source)
    with workdir(job_id) as folder:
        source = host_cache.local_source(storage, job_id, manifest.source.uri)
        out_dir = folder / rendition
        with SegmentUploader(storage, out_dir, rendition_prefix(job_id, rendition)) as uploads:
            try:
                result = encoder.encode(source, source_info, plan, out_dir, settings, on_progress)
            except process.ProcessFailed as exc:
                raise EncodeError("encode_failed", f"ffmpeg failed: {exc}") from None
            playlist_uri = uploads.finish(result.folder / PLAYLIST_NAME)
    record = record.model_copy(
        update={
            "state": "completed",
            "progress": 100.0,
            "playlist": playlist_uri,
            "bandwidth": result.stats.peak_bps,
            "average_bandwidth": result.stats.average_bps,
            "codecs": result.codecs,
            "duration": result.stats.duration,
            "segments": result.stats.segments,
            "size_bytes": result.stats.size_bytes,
            "encoder": {
                **encoder.encoder_settings(source_info, plan, settings),
                "mode": "per-rung",
            },
        }
    )
    jobs.save_rendition(job_id, record)
    emit(
        "rendition.completed",
        job_id=job_id,
        rendition=rendition,
        worker=record.worker,
        playlist=playlist_uri,
        size_bytes=record.size_bytes,
    )
    maybe_finalize(jobs, job_id, list(planned))


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
    variants = [
        Variant(
            uri=f"{r.name}/{PLAYLIST_NAME}",
            bandwidth=r.bandwidth or 0,
            average_bandwidth=r.average_bandwidth or 0,
            width=r.width,
            height=r.height,
            codecs=r.codecs or "",
            frame_rate=manifest.source.frame_rate,
        )
        for r in manifest.renditions
    ]
    master_uri = storage.put_bytes(
        RENDITIONS,
        master_key(job_id),
        master_playlist(variants).encode(),
        CONTENT_TYPES[".m3u8"],
    )
    top = max(manifest.renditions, key=lambda r: r.width * r.height)
    with workdir(job_id) as folder:
        segments = sorted(
            k for k in storage.list_keys(RENDITIONS, segments_prefix(job_id, top.name))
        )
        segment = folder / "segment.ts"
        storage.download(RENDITIONS, segments[len(segments) // 3], segment)
        poster = encoder.poster(segment, folder / "poster.jpg", get_settings())
        poster_uri = storage.put_file(RENDITIONS, poster_key(job_id), poster, "image/jpeg")
    # In either mode: a job that went per rung when its split could not meet the plan may have
    # chunks uploaded already.
    chunked_tasks.remove_intermediates(storage, job_id)
    job = jobs.load_job(job_id)  # again: a failure handler may have written it meanwhile
    assert job is not None
    # Every rendition is done, so the job is: a failure recorded meanwhile (a late duplicate
    # that failed after its rung was completed by another copy) goes to the history.
    jobs.reopen(job)
    job.master_playlist, job.poster = master_uri, poster_uri
    job.state, job.error = "completed", None
    jobs.save(job)
    host_cache.job_ended(job_id)  # here now; every other host on the event
    emit("job.completed", job_id=job_id, master_playlist=master_uri)
