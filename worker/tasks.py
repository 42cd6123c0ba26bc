"""The three tasks of a job: probe -> encode (one per rung, fanned out) -> finalize.

Every task is safe to run twice (at-least-once delivery means it will be, sometimes): outputs go to
deterministic keys and are overwritten, and finalize only ever writes the same result again.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Task

from config.ladder import RenditionPlan, choose_renditions
from config.retry_policy import retry_options
from config.settings import get_settings
from encodeq.errors import EncodeError, PermanentError
from encodeq.manifest import JobStore, Manifest, Rendition, SourceInfo
from encodeq.storage import RENDITIONS, UPLOADS, Storage, parse_uri
from worker import encoder, process
from worker.app import app
from worker.events import emit
from worker.hls import Variant, master_playlist
from worker.probe import ProbeResult
from worker.probe import probe as probe_file

logger = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".jpg": "image/jpeg",
}
#: How often a running encode writes its progress into its rendition record (events go faster).
RECORD_PROGRESS_EVERY_S = 5.0


def _jobs() -> JobStore:
    return JobStore(Storage())


def _load(jobs: JobStore, job_id: str) -> Manifest:
    """The job of a message, or a permanent error: the id is never trusted to build a key."""
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        raise PermanentError("bad_arguments", f"not a job id: {job_id!r}")
    manifest = jobs.load_job(job_id)
    if manifest is None:
        raise PermanentError("unknown_job", f"job {job_id} has no manifest")
    return manifest


@contextmanager
def _workdir(job_id: str) -> Iterator[Path]:
    base = get_settings().work_dir or None
    with tempfile.TemporaryDirectory(prefix=f"encodeq-{job_id}-", dir=base) as tmp:
        yield Path(tmp)


def _fetch_source(storage: Storage, source: SourceInfo, folder: Path) -> Path:
    """Copy the upload to a local file whose name we chose; ffmpeg only ever opens that."""
    bucket, key = parse_uri(source.uri)
    if bucket != storage.bucket(UPLOADS):
        raise PermanentError("bad_source", f"source is not in the uploads bucket: {source.uri}")
    path = folder / "source"
    storage.download(UPLOADS, key, path)
    return path


def _probe_result(source: SourceInfo) -> ProbeResult:
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


@app.task(name="encodeq.probe", bind=True, **retry_options())
def probe(self: Task, job_id: str) -> None:
    """ffprobe the upload under limits, pick the rungs (never upscale), fan out one encode each."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = _load(jobs, job_id)
    if manifest.state == "completed":
        return
    manifest.state, manifest.error = "probing", None
    jobs.save(manifest)
    emit("job.probing", job_id=job_id, worker=self.request.hostname)
    with _workdir(job_id) as folder:
        result = probe_file(_fetch_source(storage, manifest.source, folder), get_settings())
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
        }
    )
    plans = choose_renditions(result.display_width, result.display_height)
    manifest.renditions = [
        Rendition(name=p.name, width=p.width, height=p.height, video_kbps=p.video_kbps)
        for p in plans
    ]
    manifest.state = "encoding"
    jobs.save(manifest)
    for plan in plans:
        encode.apply_async(args=[job_id, plan.name])
    emit(
        "job.encoding",
        job_id=job_id,
        renditions=[r.model_dump(mode="json") for r in manifest.renditions],
        source=manifest.source.model_dump(mode="json"),
    )


@app.task(name="encodeq.encode", bind=True, **retry_options())
def encode(self: Task, job_id: str, rendition: str) -> None:
    """Encode one rung to HLS and upload it under deterministic keys; trigger finalize when last."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = _load(jobs, job_id)
    planned = {r.name: r for r in manifest.renditions}
    if rendition not in planned:
        raise PermanentError("bad_arguments", f"job {job_id} has no rendition {rendition!r}")
    done = jobs.load_rendition(job_id, rendition)
    if done is not None and done.state == "completed":
        # A duplicate delivery (a lost ack, a re-run probe): the output is already there.
        _maybe_finalize(jobs, job_id, list(planned))
        return
    record = planned[rendition].model_copy(
        update={"state": "encoding", "worker": self.request.hostname, "task_id": self.request.id,
                "progress": 0.0}
    )  # fmt: skip
    jobs.save_rendition(job_id, record)
    emit("rendition.started", job_id=job_id, rendition=rendition, worker=record.worker)
    plan = RenditionPlan(record.name, record.width, record.height, record.video_kbps)
    settings = get_settings()
    last = {"event": 0.0, "record": time.monotonic()}

    def on_progress(p: encoder.Progress) -> None:
        now = time.monotonic()
        if now - last["event"] >= settings.progress_interval_s:
            last["event"] = now
            emit("rendition.progress", job_id=job_id, rendition=rendition, worker=record.worker,
                 progress=round(p.percent, 1), fps=p.fps, speed=p.speed)  # fmt: skip
        if now - last["record"] >= RECORD_PROGRESS_EVERY_S:
            last["record"] = now
            record.progress = round(p.percent, 1)
            jobs.save_rendition(job_id, record)

    with _workdir(job_id) as folder:
        source = _fetch_source(storage, manifest.source, folder)
        try:
            result = encoder.encode(
                source,
                _probe_result(manifest.source),
                plan,
                folder / rendition,
                settings,
                on_progress,
            )
        except process.ProcessFailed as exc:
            raise EncodeError("encode_failed", f"ffmpeg failed: {exc}") from None
        prefix = f"{job_id}/{rendition}/"
        playlist = result.folder / encoder.PLAYLIST_NAME
        # Segments first, playlist last: a playlist in storage means its segments are there.
        for path in sorted(result.folder.iterdir()):
            if path != playlist:
                storage.put_file(RENDITIONS, prefix + path.name, path, CONTENT_TYPES[path.suffix])
        playlist_uri = storage.put_file(
            RENDITIONS, prefix + playlist.name, playlist, CONTENT_TYPES[".m3u8"]
        )
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
        }
    )
    jobs.save_rendition(job_id, record)
    emit("rendition.completed", job_id=job_id, rendition=rendition, worker=record.worker,
         playlist=playlist_uri, size_bytes=record.size_bytes)  # fmt: skip
    _maybe_finalize(jobs, job_id, list(planned))


def _maybe_finalize(jobs: JobStore, job_id: str, names: list[str]) -> None:
    """Publish finalize when every rung is done.

    Each encode writes its record before it looks at the others, so whichever finishes last sees
    every rung done. Two may both see it and both publish finalize: that is harmless.
    """
    records = [jobs.load_rendition(job_id, name) for name in names]
    if all(r is not None and r.state == "completed" for r in records):
        finalize.apply_async(args=[job_id])


@app.task(name="encodeq.finalize", bind=True, **retry_options())
def finalize(self: Task, job_id: str) -> None:
    """Master playlist, poster, state completed. Idempotent: a second run finds nothing to do."""
    storage = Storage()
    jobs = JobStore(storage)
    _load(jobs, job_id)
    manifest = jobs.load(job_id)
    assert manifest is not None
    if manifest.state == "completed":
        return
    if not manifest.renditions or any(r.state != "completed" for r in manifest.renditions):
        logger.info("finalize(%s): not every rendition is done yet; nothing to do", job_id)
        return
    variants = [
        Variant(
            uri=f"{r.name}/{encoder.PLAYLIST_NAME}",
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
        f"{job_id}/master.m3u8",
        master_playlist(variants).encode(),
        CONTENT_TYPES[".m3u8"],
    )
    top = max(manifest.renditions, key=lambda r: r.width * r.height)
    with _workdir(job_id) as folder:
        segments = sorted(k for k in storage.list_keys(RENDITIONS, f"{job_id}/{top.name}/seg_"))
        segment = folder / "segment.ts"
        storage.download(RENDITIONS, segments[len(segments) // 3], segment)
        poster = encoder.poster(segment, folder / "poster.jpg", get_settings())
        poster_uri = storage.put_file(RENDITIONS, f"{job_id}/poster.jpg", poster, "image/jpeg")
    manifest.master_playlist, manifest.poster = master_uri, poster_uri
    manifest.state, manifest.error = "completed", None
    jobs.save(manifest)
    emit("job.completed", job_id=job_id, master_playlist=master_uri)
