"""The tasks of a job: probe -> encode (one per rung, fanned out) -> finalize.

Chunked mode (``Manifest.mode == "chunked"``): probe also cuts the source into chunks ->
encode_chunk (one per chunk, every rung from one decode) + encode_audio (once) -> join (one per
rung, once every chunk and the audio exist; seam-checked) -> finalize. watch_chunks offers
stragglers to a second worker.

Every task is safe to run twice (at-least-once delivery means it will be, sometimes): outputs go to
deterministic keys and are overwritten, and finalize only ever writes the same result again.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from celery import Task

from config.ladder import RenditionPlan, choose_renditions
from config.retry_policy import retry_options
from config.settings import get_settings
from config.topology import ENCODE_QUEUE_NAME
from encodeq.errors import EncodeError, PermanentError
from encodeq.manifest import (
    AUDIO,
    ChunkRecord,
    EncodeMode,
    JobStore,
    Manifest,
    Rendition,
    SourceInfo,
    is_job_id,
    now_iso,
)
from encodeq.storage import RENDITIONS, UPLOADS, Storage
from worker import chunking, encoder, joining, process, seams, source_cache
from worker.app import app
from worker.events import emit
from worker.hls import CONTENT_TYPES, Variant, master_playlist
from worker.probe import ProbeResult
from worker.probe import probe as probe_file
from worker.segment_upload import SegmentUploader

logger = logging.getLogger(__name__)

#: How often a running encode writes its progress into its rendition record (events go faster).
RECORD_PROGRESS_EVERY_S = 5.0


def _jobs() -> JobStore:
    return JobStore(Storage())


def _load(jobs: JobStore, job_id: str) -> Manifest:
    """The job of a message, or a permanent error: the id is never trusted to build a key."""
    if not is_job_id(job_id):
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
    settings = get_settings()
    with _workdir(job_id) as folder:
        source = source_cache.local_source(storage, job_id, manifest.source.uri)
        result = probe_file(source, settings)
        manifest.mode = choose_mode(manifest.mode, result.duration)
        if manifest.mode == "chunked":
            _split_into_chunks(storage, manifest, source, result, folder)
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
    if manifest.chunks is not None and manifest.mode == "chunked":
        manifest.source.frames = sum(manifest.chunks.frames)
    plans = choose_renditions(result.display_width, result.display_height)
    manifest.renditions = [
        Rendition(name=p.name, width=p.width, height=p.height, video_kbps=p.video_kbps)
        for p in plans
    ]
    manifest.state = "encoding"
    jobs.save(manifest)
    if manifest.mode == "chunked" and manifest.chunks is not None:
        if result.has_audio:  # first: it runs beside the chunks, not after them (FIFO queue)
            encode_audio.apply_async(args=[job_id])
        for index in range(manifest.chunks.count):
            encode_chunk.apply_async(args=[job_id, index])
        watch_chunks.apply_async(args=[job_id, []], countdown=settings.straggler_check_s)
    else:
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
        source = source_cache.local_source(storage, job_id, manifest.source.uri)
        out_dir = folder / rendition
        with SegmentUploader(storage, out_dir, f"{job_id}/{rendition}/") as uploads:
            try:
                result = encoder.encode(
                    source, _probe_result(manifest.source), plan, out_dir, settings, on_progress
                )
            except process.ProcessFailed as exc:
                raise EncodeError("encode_failed", f"ffmpeg failed: {exc}") from None
            playlist_uri = uploads.finish(result.folder / encoder.PLAYLIST_NAME)
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
                **encoder.encoder_settings(_probe_result(manifest.source), plan, settings),
                "mode": "per-rung",
            },
        }
    )
    jobs.save_rendition(job_id, record)
    emit("rendition.completed", job_id=job_id, rendition=rendition, worker=record.worker,
         playlist=playlist_uri, size_bytes=record.size_bytes)  # fmt: skip
    _maybe_finalize(jobs, job_id, list(planned))


def _maybe_finalize(
    jobs: JobStore, job_id: str, names: list[str], queue: str | None = None
) -> None:
    """Publish finalize when every rung is done.

    Each encode writes its record before it looks at the others, so whichever finishes last sees
    every rung done. Two may both see it and both publish finalize: that is harmless. ``queue``
    overrides the route (chunked joins use the encode queue: see config/topology.py).
    """
    records = [jobs.load_rendition(job_id, name) for name in names]
    if all(r is not None and r.state == "completed" for r in records):
        finalize.apply_async(args=[job_id], **({"queue": queue} if queue else {}))


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
    source_cache.drop(job_id)
    emit("job.completed", job_id=job_id, master_playlist=master_uri)


# --- chunked mode ------------------------------------------------------------------------------
def choose_mode(requested: EncodeMode | None, duration: float) -> EncodeMode:
    """The upload's choice, else chunked for sources long enough that it pays (bench_chunked)."""
    if requested is not None:
        return requested
    return "chunked" if duration >= get_settings().chunked_min_duration_s else "per-rung"


def _chunk_source_key(job_id: str, index: int) -> str:
    return f"{job_id}/chunks/src/{index:05d}.mp4"


def _chunk_output_key(job_id: str, rendition: str, index: int) -> str:
    return f"{job_id}/chunks/{rendition}/{index:05d}.ts"


def _audio_key(job_id: str) -> str:
    return f"{job_id}/chunks/audio.ts"


def _split_into_chunks(
    storage: Storage, manifest: Manifest, source: Path, result: ProbeResult, folder: Path
) -> None:
    """Cut the source (stream copy at keyframes, else accurately) and upload the chunks."""
    settings = get_settings()
    try:
        plan, files = chunking.split(source, folder / "chunks", result.frame_rate, settings)
    except process.ProcessFailed as exc:
        raise EncodeError("split_failed", f"ffmpeg could not split the source: {exc}") from None
    for index, path in enumerate(files):
        storage.put_file(UPLOADS, _chunk_source_key(manifest.job_id, index), path, "video/mp4")
    manifest.chunks = plan


def _seconds_since(iso: str | None) -> float:
    if not iso:
        return 0.0
    return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()


def _chunked_manifest(jobs: JobStore, job_id: str) -> Manifest:
    manifest = _load(jobs, job_id)
    if manifest.mode != "chunked" or manifest.chunks is None:
        raise PermanentError("bad_arguments", f"job {job_id} is not in chunked mode")
    return manifest


@app.task(name="encodeq.encode_chunk", bind=True, **retry_options())
def encode_chunk(self: Task, job_id: str, index: int, offer: int = 1) -> None:
    """Encode every rung of one chunk from one decode; the first of two offers to finish wins."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = _chunked_manifest(jobs, job_id)
    assert manifest.chunks is not None
    if not isinstance(index, int) or not 0 <= index < manifest.chunks.count:
        raise PermanentError("bad_arguments", f"job {job_id} has no chunk {index!r}")
    if manifest.state in ("failed", "completed"):
        return
    done = jobs.load_chunk(job_id, index)
    if done is not None and done.state == "completed":
        _maybe_join(jobs, manifest)  # a duplicate delivery, or a straggler's first copy won
        return
    worker = self.request.hostname
    record = ChunkRecord(index=index, state="encoding", worker=worker, task_id=self.request.id,
                         started_at=now_iso(), offers=offer)  # fmt: skip
    jobs.save_chunk(job_id, record)
    emit("chunk.started", job_id=job_id, chunk=index, chunks=manifest.chunks.count,
         worker=worker, offer=offer)  # fmt: skip
    settings = get_settings()
    probe_result = _probe_result(manifest.source)
    plans = [RenditionPlan(r.name, r.width, r.height, r.video_kbps) for r in manifest.renditions]
    started = time.monotonic()
    expected = manifest.chunks.frames[index]
    with _workdir(job_id) as folder:
        chunk = folder / "chunk.mp4"
        storage.download(UPLOADS, _chunk_source_key(job_id, index), chunk)
        outputs = {plan.name: folder / f"{plan.name}.ts" for plan in plans}
        try:
            process.run(
                encoder.chunk_encode_args(chunk, probe_result, plans, outputs, settings),
                timeout_s=settings.encode_time_limit_s + encoder.FFMPEG_TIMEOUT_MARGIN_S,
                on_progress=lambda block: None,
                watch_dir=folder,
                max_output_bytes=settings.max_output_bytes,
            )
        except process.ProcessFailed as exc:
            raise EncodeError("encode_failed", f"ffmpeg failed on chunk {index}: {exc}") from None
        for name, path in outputs.items():  # each chunk is verified as it finishes
            frames = chunking.video_packets(path, settings, trusted=True).frames
            if frames != expected:
                raise EncodeError(
                    "chunk_incomplete", f"chunk {index} {name}: {frames} frames, not {expected}"
                )
        won = jobs.load_chunk(job_id, index)
        if won is not None and won.state == "completed" and won.task_id != self.request.id:
            # The other offer finished first; its outputs are already there (deterministic keys).
            emit("chunk.discarded", job_id=job_id, chunk=index, worker=worker, winner=won.worker)
            return
        for name, path in outputs.items():
            storage.put_file(UPLOADS, _chunk_output_key(job_id, name, index), path, "video/mp2t")
    record = record.model_copy(
        update={"state": "completed", "seconds": round(time.monotonic() - started, 3),
                "frames": expected, "duration": manifest.chunks.durations[index]}
    )  # fmt: skip
    jobs.save_chunk(job_id, record)
    emit("chunk.completed", job_id=job_id, chunk=index, chunks=manifest.chunks.count,
         worker=worker, seconds=record.seconds, offer=offer)  # fmt: skip
    _maybe_join(jobs, manifest, progress_from=worker)


@app.task(name="encodeq.encode_audio", bind=True, **retry_options())
def encode_audio(self: Task, job_id: str) -> None:
    """The whole source's audio, once: no per-chunk audio, so nothing to click at the seams."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = _chunked_manifest(jobs, job_id)
    if manifest.state in ("failed", "completed"):
        return
    done = jobs.load_chunk(job_id, AUDIO)
    if done is not None and done.state == "completed":
        _maybe_join(jobs, manifest)
        return
    record = ChunkRecord(index=AUDIO, state="encoding", worker=self.request.hostname,
                         task_id=self.request.id, started_at=now_iso())  # fmt: skip
    jobs.save_chunk(job_id, record)
    settings = get_settings()
    started = time.monotonic()
    with _workdir(job_id) as folder:
        source = source_cache.local_source(storage, job_id, manifest.source.uri)
        out = folder / "audio.ts"
        try:
            process.run(
                joining.audio_args(source, _probe_result(manifest.source), out, settings),
                timeout_s=settings.encode_time_limit_s + encoder.FFMPEG_TIMEOUT_MARGIN_S,
                on_progress=lambda block: None,
            )
        except process.ProcessFailed as exc:
            raise EncodeError("encode_failed", f"ffmpeg failed on the audio: {exc}") from None
        storage.put_file(UPLOADS, _audio_key(job_id), out, "video/mp2t")
    record.state, record.seconds = "completed", round(time.monotonic() - started, 3)
    jobs.save_chunk(job_id, record)
    _maybe_join(jobs, manifest)


def _maybe_join(jobs: JobStore, manifest: Manifest, progress_from: str | None = None) -> None:
    """Publish one join per rung when every chunk (and the audio) is done.

    Each chunk task writes its record before it reads the others, so whoever finishes last sees
    them all; two may both see it and both publish: joins are idempotent.
    """
    assert manifest.chunks is not None
    job_id = manifest.job_id
    records = [jobs.load_chunk(job_id, i) for i in range(manifest.chunks.count)]
    done = sum(1 for r in records if r is not None and r.state == "completed")
    if progress_from is not None:
        for r in manifest.renditions:  # watch and the dashboard draw chunk progress per rung
            percent = round(100.0 * done / manifest.chunks.count, 1)
            emit("rendition.progress", job_id=job_id, rendition=r.name, worker=progress_from,
                 progress=percent, fps=0.0, speed=0.0)  # fmt: skip
    if done < manifest.chunks.count:
        return
    if manifest.source.has_audio:
        audio = jobs.load_chunk(job_id, AUDIO)
        if audio is None or audio.state != "completed":
            return
    for r in manifest.renditions:
        join.apply_async(args=[job_id, r.name])


@app.task(name="encodeq.join", bind=True, **retry_options())
def join(self: Task, job_id: str, rendition: str) -> None:
    """Concatenate a rung's chunks (+ audio) into HLS, check the seams, publish; else fail."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = _chunked_manifest(jobs, job_id)
    chunks = manifest.chunks
    assert chunks is not None
    planned = {r.name: r for r in manifest.renditions}
    if rendition not in planned:
        raise PermanentError("bad_arguments", f"job {job_id} has no rendition {rendition!r}")
    done = jobs.load_rendition(job_id, rendition)
    if done is not None and done.state == "completed":
        _maybe_finalize(jobs, job_id, list(planned), queue=ENCODE_QUEUE_NAME)
        return
    if manifest.state == "failed":
        return
    record = planned[rendition].model_copy(
        update={"state": "encoding", "worker": self.request.hostname, "task_id": self.request.id}
    )
    jobs.save_rendition(job_id, record)
    emit("rendition.started", job_id=job_id, rendition=rendition, worker=record.worker)
    settings = get_settings()
    probe_result = _probe_result(manifest.source)
    plan = RenditionPlan(record.name, record.width, record.height, record.video_kbps)
    with _workdir(job_id) as folder:
        parts = folder / "parts"
        parts.mkdir()
        files = []
        for index in range(chunks.count):
            path = parts / f"c{index:05d}.ts"
            storage.download(UPLOADS, _chunk_output_key(job_id, rendition, index), path)
            files.append(path)
        audio = None
        if probe_result.has_audio:
            audio = folder / "audio.ts"
            storage.download(UPLOADS, _audio_key(job_id), audio)
        out_dir = folder / rendition
        try:
            playlist = joining.join(files, chunks.durations, audio, probe_result, out_dir, settings)
        except process.ProcessFailed as exc:
            raise EncodeError("join_failed", f"ffmpeg could not join {rendition}: {exc}") from None
        check = seams.check(playlist, manifest.source.frames or sum(chunks.frames),
                            chunks.starts[1:], probe_result.frame_rate, probe_result.has_audio,
                            settings, chunks.seam_intervals)  # fmt: skip
        record.seam_check = check
        record.encoder = {
            **encoder.encoder_settings(probe_result, plan, settings),
            "mode": "chunked",
            "chunks": chunks.count,
            "chunk_seconds": chunks.seconds,
            "split": chunks.split,
        }
        if not check.passed:
            record.state = "failed"
            jobs.save_rendition(job_id, record)
            problems = "; ".join(check.problems)
            raise EncodeError("seam_check_failed", f"{rendition} failed its seam check: {problems}")
        stats = encoder.media_playlist_stats(playlist)
        encoder.check_complete(stats, probe_result)
        playlist_uri = SegmentUploader(storage, out_dir, f"{job_id}/{rendition}/").finish(playlist)
        codecs = encoder.codecs_of(out_dir, probe_result.has_audio, settings)
    record = record.model_copy(
        update={
            "state": "completed",
            "progress": 100.0,
            "playlist": playlist_uri,
            "bandwidth": stats.peak_bps,
            "average_bandwidth": stats.average_bps,
            "codecs": codecs,
            "duration": stats.duration,
            "segments": stats.segments,
            "size_bytes": stats.size_bytes,
        }
    )
    jobs.save_rendition(job_id, record)
    emit("rendition.completed", job_id=job_id, rendition=rendition, worker=record.worker,
         playlist=playlist_uri, size_bytes=record.size_bytes)  # fmt: skip
    _maybe_finalize(jobs, job_id, list(planned), queue=ENCODE_QUEUE_NAME)


@app.task(name="encodeq.watch_chunks", bind=True, **retry_options())
def watch_chunks(self: Task, job_id: str, offered: list[int]) -> None:
    """Every few seconds while chunks run: offer a straggler to a second worker (once each).

    A chunk is a straggler when it has run ``straggler_factor`` times the median of its finished
    siblings and at least ``straggler_min_s``. Both copies write the same keys; the first to finish
    records the chunk, the other sees that and discards its result.
    """
    settings = get_settings()
    jobs = _jobs()
    manifest = _chunked_manifest(jobs, job_id)
    assert manifest.chunks is not None
    if manifest.finished:
        return
    records = [jobs.load_chunk(job_id, i) for i in range(manifest.chunks.count)]
    finished = [r.seconds or 0.0 for r in records if r is not None and r.state == "completed"]
    if len(finished) == len(records):
        return
    offered = [i for i in offered if isinstance(i, int)]
    if finished:
        median = statistics.median(finished)
        limit = max(settings.straggler_min_s, settings.straggler_factor * median)
        for r in records:
            if r is None or r.state != "encoding" or r.index in offered:
                continue
            running = _seconds_since(r.started_at)
            if running > limit:
                offered.append(r.index)
                encode_chunk.apply_async(args=[job_id, r.index], kwargs={"offer": r.offers + 1})
                emit("chunk.straggler", job_id=job_id, chunk=r.index, worker=r.worker,
                     running_s=round(running, 1), median_s=round(median, 2))  # fmt: skip
                logger.warning("job %s chunk %d: straggler on %s after %.1fs, offered again",
                               job_id, r.index, r.worker, running)  # fmt: skip
    watch_chunks.apply_async(args=[job_id, offered], countdown=settings.straggler_check_s)
