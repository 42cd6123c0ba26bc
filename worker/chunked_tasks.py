"""Chunked mode: cut the source into chunks, encode every rung of a chunk from one decode, on
competing workers, then join each rung and check its seams.

probe (worker/tasks.py) calls ``plan``, records the plan, then ``cut_and_fan_out``: encode_audio
(once for the whole source) and one encode_chunk per chunk, each published as soon as its chunk is
cut -> join (one per rung, once every chunk and the audio exist; seam checked) -> finalize.
watch_chunks offers stragglers to a second worker.

Intermediate objects live under ``uploads/<job>/chunks/`` (sources, per-rung outputs, audio) and go
when the job completes; a failed job keeps them, so a replayed message finds what it needs. Every
task on a host keeps what it made in the host cache, so a later task there skips the download.
"""

from __future__ import annotations

import logging
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from celery import Task
from minio.error import S3Error

from config.ladder import RenditionPlan
from config.retry_policy import retry_options
from config.settings import get_settings
from config.topology import ENCODE_QUEUE_NAME
from core.errors import EncodeError, PermanentError
from core.layout import (
    AUDIO,
    UPLOADS,
    audio_key,
    chunk_output_key,
    chunk_source_key,
    chunks_prefix,
    rendition_prefix,
)
from core.manifest import ChunkRecord, JobStore, Manifest, now_iso
from core.storage import Storage
from worker import chunking, encoder, host_cache, joining, process, seams
from worker.app import app
from worker.events import emit
from worker.probe import ProbeResult, read_limit_s
from worker.segment_upload import SegmentUploader
from worker.task_support import (
    job_store,
    load_job,
    maybe_finalize,
    probe_result,
    reopen_if_replayed,
    workdir,
)

logger = logging.getLogger(__name__)


def plan(source: Path, result: ProbeResult) -> chunking.SplitPlan:
    """Where the source will be cut, from its packets (the job records it before any cut).
    Packets ffprobe cannot list plan the job per rung: chunking is a way to encode, not a verdict
    on the source (the per-rung encode gives that)."""
    settings = get_settings()
    allowed = settings.seam_av_tolerance_s + 1 / result.frame_rate
    if result.has_audio and result.av_mismatch_s > allowed:
        return chunking.not_chunked(
            f"audio and video differ by {result.av_mismatch_s:.3f}s in start or length (chunked "
            "mode encodes them apart and could not keep that)",
            settings,
        )
    try:
        return chunking.plan(source, result.frame_rate, settings)
    except process.ProcessFailed as exc:
        return chunking.not_chunked(f"ffprobe could not list the packets: {exc}", settings)


def cut_and_fan_out(
    storage: Storage,
    jobs: JobStore,
    manifest: Manifest,
    source: Path,
    split_plan: chunking.SplitPlan,
    folder: Path,
) -> None:
    """Publish the audio and the straggler watchdog, then cut the source and publish each chunk's
    encode the moment the chunk is uploaded: the first chunks encode while the rest is cut.

    ``manifest`` (with the plan) is saved before this runs, so every chunk task finds its chunk.
    """
    job_id = manifest.job_id
    settings = get_settings()
    if split_plan.per_rung is not None:
        _encode_per_rung(jobs, job_id, split_plan.per_rung)
        return
    if split_plan.span > read_limit_s(manifest.source.duration or 0.0, settings):
        # The header said less than the packets hold (within the limit: the plan checked); the
        # chunks hold every packet, so the audio and the join's completeness check go by them.
        current = load_job(jobs, job_id)
        current.source = current.source.model_copy(update={"duration": split_plan.span})
        jobs.save(current)
    if manifest.source.has_audio:  # first: it runs beside the chunks, not after them (FIFO queue)
        encode_audio.apply_async(args=[job_id])
    watch_chunks.apply_async(args=[job_id, []], countdown=settings.straggler_check_s)

    def ready(index: int, path: Path) -> None:
        key = chunk_source_key(job_id, index)
        host_cache.put(storage, job_id, UPLOADS, key, path, "video/mp4")
        encode_chunk.apply_async(args=[job_id, index])

    def fallback(reason: str) -> None:
        # Recorded before the first accurately cut chunk is published (so before any join can
        # run, and finalize after it); only the plan's fields change.
        current = load_job(jobs, job_id)
        assert current.chunks is not None
        current.chunks = current.chunks.model_copy(update={"split": "accurate", "reason": reason})
        jobs.save(current)
        logger.warning("job %s: %s; cutting the rest accurately", job_id, reason)

    try:
        chunking.split(source, folder / "chunks", split_plan, settings, ready, fallback)
    except chunking.SplitImpossible as exc:
        _encode_per_rung(jobs, job_id, str(exc))
    except EncodeError as exc:
        if exc.code != "output_too_large":
            raise
        # The lossless split of a long source can outgrow the cap: the split stops there (the
        # cap holds), and the source is encoded per rung, whose encodes obey the cap too.
        _encode_per_rung(jobs, job_id, f"the split stopped at the output cap: {exc.message}")


def _encode_per_rung(jobs: JobStore, job_id: str, reason: str) -> None:
    """The last resort of a source that cannot be chunked as planned: the job goes per rung (one
    encode per rung, from the source) rather than fail. Chunk tasks already published find it no
    longer chunked and finish without doing anything (``_chunked_manifest``). Published by name:
    the per-rung tasks' module imports this one."""
    current = load_job(jobs, job_id)
    current.mode, current.chunks, current.mode_reason = "per-rung", None, reason
    current.source = current.source.model_copy(update={"frames": None})
    jobs.save(current)
    logger.warning("job %s: %s; encoding it per rung instead", job_id, reason)
    emit("job.mode_changed", job_id=job_id, mode="per-rung", reason=reason)
    for rendition in current.renditions:
        app.send_task("encodeq.encode", args=[job_id, rendition.name])


def remove_intermediates(storage: Storage, job_id: str) -> None:
    """Delete the job's chunk objects (finalize, once every rung is published). Best effort: a
    leftover costs storage, never correctness, so a failure here does not fail the job."""
    try:
        removed = storage.remove_prefix(UPLOADS, chunks_prefix(job_id))
        logger.info("job %s: removed %d intermediate chunk objects", job_id, removed)
    except Exception:
        logger.warning("job %s: could not remove its chunk objects", job_id, exc_info=True)


def _seconds_since(iso: str | None) -> float:
    if not iso:
        return 0.0
    return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()


def _chunked_manifest(jobs: JobStore, job_id: str) -> Manifest | None:
    """The job, while it is in chunked mode. None when it is not: a job whose source could not be
    chunked as planned went per rung after its first chunk tasks were published, and those then
    have nothing left to do, which is no failure (nor is a stray chunk message of a per-rung job).
    """
    manifest = load_job(jobs, job_id)
    if manifest.mode != "chunked" or manifest.chunks is None:
        logger.info("job %s is not (or no longer) in chunked mode: nothing to do here", job_id)
        return None
    return manifest


@app.task(name="encodeq.encode_chunk", bind=True, **retry_options())
def encode_chunk(self: Task, job_id: str, index: int, offer: int = 1) -> None:
    """Encode every rung of one chunk from one decode; the first of two offers to finish wins."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = _chunked_manifest(jobs, job_id)
    if manifest is None:
        return
    assert manifest.chunks is not None
    if not isinstance(index, int) or not 0 <= index < manifest.chunks.count:
        raise PermanentError("bad_arguments", f"job {job_id} has no chunk {index!r}")
    # A failed job's chunks still encode (a replay of what failed then completes the job);
    # only a replayed message reopens it.
    reopen_if_replayed(self, jobs, manifest)
    if manifest.state == "completed":
        return
    done = jobs.load_chunk(job_id, index)
    if done is not None and done.state == "completed":
        _maybe_join(jobs, manifest)  # a duplicate delivery, or a straggler's first copy won
        return
    worker = self.request.hostname
    record = ChunkRecord(
        index=index,
        state="encoding",
        worker=worker,
        task_id=self.request.id,
        started_at=now_iso(),
        offers=offer,
    )
    jobs.save_chunk(job_id, record)
    emit(
        "chunk.started",
        job_id=job_id,
        chunk=index,
        chunks=manifest.chunks.count,
        worker=worker,
        offer=offer,
    )
    settings = get_settings()
    source_info = probe_result(manifest.source)
    plans = [RenditionPlan(r.name, r.width, r.height, r.video_kbps) for r in manifest.renditions]
    started = time.monotonic()
    expected = manifest.chunks.frames[index]
    with workdir(job_id) as folder:
        try:
            chunk = host_cache.fetch(storage, job_id, UPLOADS, chunk_source_key(job_id, index))
        except S3Error as exc:
            # A second offer of a straggler that started late: the first won, the job completed
            # and finalize removed the chunks. Nothing is left to do, which is no failure.
            won = jobs.load_chunk(job_id, index)
            if exc.code == "NoSuchKey" and won is not None and won.state == "completed":
                emit(
                    "chunk.discarded", job_id=job_id, chunk=index, worker=worker, winner=won.worker
                )
                return
            raise
        outputs = {plan.name: folder / f"{plan.name}.ts" for plan in plans}
        encode_started = time.monotonic()
        try:
            process.run(
                encoder.chunk_encode_args(chunk, source_info, plans, outputs, settings),
                timeout_s=settings.encode_time_limit_s + encoder.FFMPEG_TIMEOUT_MARGIN_S,
                on_progress=lambda block: None,
                watch_dir=folder,
                max_output_bytes=settings.max_output_bytes,
            )
        except process.ProcessFailed as exc:
            raise EncodeError("encode_failed", f"ffmpeg failed on chunk {index}: {exc}") from None
        encode_seconds = time.monotonic() - encode_started
        for name, path in outputs.items():  # each chunk is verified as it finishes
            frames = chunking.video_packets(path, settings, trusted=True).frames
            if frames != expected:
                raise EncodeError(
                    "chunk_incomplete", f"chunk {index} {name}: {frames} frames, not {expected}"
                )
        won = jobs.load_chunk(job_id, index)
        if (won is not None and won.state == "completed" and won.task_id != self.request.id) or (
            load_job(jobs, job_id).state == "completed"
        ):
            # The other offer finished first (its outputs are already there: deterministic keys),
            # or the job is even done: uploading now would leave objects finalize removed.
            winner = won.worker if won is not None else None
            emit("chunk.discarded", job_id=job_id, chunk=index, worker=worker, winner=winner)
            return
        for name, path in outputs.items():
            key = chunk_output_key(job_id, name, index)
            host_cache.put(storage, job_id, UPLOADS, key, path, "video/mp2t")
    record = record.model_copy(
        update={
            "state": "completed",
            "seconds": round(time.monotonic() - started, 3),
            "encode_seconds": round(encode_seconds, 3),
            "frames": expected,
            "duration": manifest.chunks.durations[index],
        }
    )
    jobs.save_chunk(job_id, record)
    emit(
        "chunk.completed",
        job_id=job_id,
        chunk=index,
        chunks=manifest.chunks.count,
        worker=worker,
        seconds=record.seconds,
        offer=offer,
    )
    _maybe_join(jobs, manifest, progress_from=worker)


@app.task(name="encodeq.encode_audio", bind=True, **retry_options())
def encode_audio(self: Task, job_id: str) -> None:
    """The whole source's audio, once: no per-chunk audio, so nothing to click at the seams."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = _chunked_manifest(jobs, job_id)
    if manifest is None:
        return
    reopen_if_replayed(self, jobs, manifest)
    if manifest.state == "completed":
        return
    done = jobs.load_chunk(job_id, AUDIO)
    if done is not None and done.state == "completed":
        _maybe_join(jobs, manifest)
        return
    record = ChunkRecord(
        index=AUDIO,
        state="encoding",
        worker=self.request.hostname,
        task_id=self.request.id,
        started_at=now_iso(),
    )
    jobs.save_chunk(job_id, record)
    settings = get_settings()
    started = time.monotonic()
    with workdir(job_id) as folder:
        source = host_cache.local_source(storage, job_id, manifest.source.uri)
        out = folder / "audio.ts"
        try:
            process.run(
                joining.audio_args(source, probe_result(manifest.source), out, settings),
                timeout_s=settings.encode_time_limit_s + encoder.FFMPEG_TIMEOUT_MARGIN_S,
                on_progress=lambda block: None,
            )
        except process.ProcessFailed as exc:
            raise EncodeError("encode_failed", f"ffmpeg failed on the audio: {exc}") from None
        host_cache.put(storage, job_id, UPLOADS, audio_key(job_id), out, "video/mp2t")
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
            emit(
                "rendition.progress",
                job_id=job_id,
                rendition=r.name,
                worker=progress_from,
                progress=percent,
                fps=0.0,
                speed=0.0,
            )
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
    if manifest is None:
        return
    chunks = manifest.chunks
    assert chunks is not None
    planned = {r.name: r for r in manifest.renditions}
    if rendition not in planned:
        raise PermanentError("bad_arguments", f"job {job_id} has no rendition {rendition!r}")
    reopen_if_replayed(self, jobs, manifest)
    done = jobs.load_rendition(job_id, rendition)
    if done is not None and done.state == "completed":
        maybe_finalize(jobs, job_id, list(planned), queue=ENCODE_QUEUE_NAME)
        return
    record = planned[rendition].model_copy(
        update={"state": "encoding", "worker": self.request.hostname, "task_id": self.request.id}
    )
    jobs.save_rendition(job_id, record)
    emit("rendition.started", job_id=job_id, rendition=rendition, worker=record.worker)
    settings = get_settings()
    source_info = probe_result(manifest.source)
    plan = RenditionPlan(record.name, record.width, record.height, record.video_kbps)
    with workdir(job_id) as folder:
        parts = folder / "parts"
        parts.mkdir()
        files = []
        for index in range(chunks.count):
            key = chunk_output_key(job_id, rendition, index)
            files.append(
                host_cache.fetch_as(storage, job_id, UPLOADS, key, parts / f"c{index:05d}.ts")
            )
        audio = None
        if source_info.has_audio:
            audio = host_cache.fetch(storage, job_id, UPLOADS, audio_key(job_id))
        out_dir = folder / rendition
        try:
            playlist = joining.join(files, chunks.durations, audio, source_info, out_dir, settings)
        except process.ProcessFailed as exc:
            raise EncodeError("join_failed", f"ffmpeg could not join {rendition}: {exc}") from None
        check = seams.check(
            playlist,
            manifest.source.frames or sum(chunks.frames),
            chunks.starts[1:],
            source_info.frame_rate,
            source_info.has_audio,
            settings,
            chunks.seam_intervals,
        )
        record.seam_check = check
        record.encoder = {
            **encoder.encoder_settings(source_info, plan, settings),
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
        encoder.check_complete(stats, source_info)
        playlist_uri = SegmentUploader(
            storage, out_dir, rendition_prefix(job_id, rendition)
        ).finish(playlist)
        codecs = encoder.codecs_of(out_dir, source_info.has_audio, settings)
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
    emit(
        "rendition.completed",
        job_id=job_id,
        rendition=rendition,
        worker=record.worker,
        playlist=playlist_uri,
        size_bytes=record.size_bytes,
    )
    maybe_finalize(jobs, job_id, list(planned), queue=ENCODE_QUEUE_NAME)


@app.task(name="encodeq.watch_chunks", bind=True, **retry_options())
def watch_chunks(self: Task, job_id: str, offered: list[int]) -> None:
    """Every few seconds while chunks run: offer a straggler to a second worker (once each).

    A chunk is a straggler when it has run ``straggler_factor`` times the median of its finished
    siblings and at least ``straggler_min_s``. Both copies write the same keys; the first to finish
    records the chunk, the other sees that and discards its result.
    """
    settings = get_settings()
    jobs = job_store()
    manifest = _chunked_manifest(jobs, job_id)
    if manifest is None:
        return
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
                emit(
                    "chunk.straggler",
                    job_id=job_id,
                    chunk=r.index,
                    worker=r.worker,
                    running_s=round(running, 1),
                    median_s=round(median, 2),
                )
                logger.warning(
                    "job %s chunk %d: straggler on %s after %.1fs, offered again",
                    job_id,
                    r.index,
                    r.worker,
                    running,
                )
    watch_chunks.apply_async(args=[job_id, offered], countdown=settings.straggler_check_s)
