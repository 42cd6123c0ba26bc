"""Chunked mode's encodes: every rung of one chunk from one decode of its range of the source
(``encode_chunk``), the whole source's audio once (``encode_audio``), and the fan-in to the joins
once all of them are done."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from celery import Task

from config.ladder import RenditionPlan
from config.retry_policy import retry_options
from config.settings import Settings, get_settings
from core import metrics
from core.errors import EncodeError, PermanentError
from core.events import emit
from core.intermediates import remove_if_ended
from core.job_model import ChunkRecord, Manifest, ProbeResult, now_iso
from core.layout import AUDIO, UPLOADS, audio_key, chunk_output_key
from core.manifest import JobStore
from core.storage import Storage
from worker import encoder, host_cache, lanes, process, window
from worker.app import app
from worker.modes.chunked import joining
from worker.modes.chunked.chunked_job import chunk_rungs, chunked_manifest
from worker.modes.chunked.join_task import join
from worker.modes.chunked.packets import video_packets
from worker.replay_rule import reopen_if_replayed
from worker.task_support import load_job, workdir

logger = logging.getLogger(__name__)


@app.task(name="encodeq.encode_chunk", bind=True, **retry_options())
def encode_chunk(self: Task, job_id: str, index: int, offer: int = 1) -> None:
    """Encode every rung of one chunk from one decode; the first of two offers to finish wins."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = chunked_manifest(jobs, job_id)
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
        # a duplicate delivery, or a straggler's first copy won: it still owes the next chunk
        _publish_next(self, jobs, manifest, index)
        join_when_done(jobs, manifest)
        return
    record = _start(self, jobs, manifest, index, offer)
    started = time.monotonic()
    with workdir(job_id) as folder:
        source = host_cache.local_source(storage, job_id, manifest.source.uri)
        outputs, encode_seconds = _encode_rungs(source, manifest, index, folder, get_settings())
        metrics.chunk_encoded(outputs, encode_seconds, manifest.chunks.durations[index])
        if _lost(self, jobs, job_id, index, record.worker):
            return
        for name, path in outputs.items():
            key = chunk_output_key(job_id, name, index)
            host_cache.put(storage, job_id, UPLOADS, key, path, "video/mp2t")
        remove_if_ended(jobs, job_id)  # the job may have completed since _lost looked
    record = record.model_copy(
        update={
            "state": "completed",
            "seconds": round(time.monotonic() - started, 3),
            "encode_seconds": round(encode_seconds, 3),
            "frames": manifest.chunks.frames[index],
            "duration": manifest.chunks.durations[index],
        }
    )
    jobs.save_chunk(job_id, record)
    emit(
        app,
        "chunk.completed",
        job_id=job_id,
        chunk=index,
        chunks=manifest.chunks.count,
        worker=record.worker,
        seconds=record.seconds,
        offer=offer,
    )
    _publish_next(self, jobs, manifest, index)
    join_when_done(jobs, manifest, progress_from=record.worker)


def chunk_publisher(manifest: Manifest, offer: int = 1) -> Callable[[int], None]:
    """Publishes one of the job's chunk encodes, in the job's lane (worker/window.py)."""

    def publish(index: int) -> None:
        lane = lanes.lane_of(manifest)
        encode_chunk.apply_async(args=[manifest.job_id, index], kwargs={"offer": offer}, queue=lane)

    return publish


def _publish_next(task: Task, jobs: JobStore, manifest: Manifest, index: int) -> None:
    """The chunk ``window`` places after this one, unless it started (worker/window.py)."""
    assert manifest.chunks is not None

    def started(successor: int) -> bool:
        return jobs.load_chunk(manifest.job_id, successor) is not None

    count = manifest.chunks.count
    window.publish_after(task, manifest, index, count, started, chunk_publisher(manifest))


def _start(task: Task, jobs: JobStore, manifest: Manifest, index: int, offer: int) -> ChunkRecord:
    """Record (and announce) that this worker encodes the chunk now."""
    assert manifest.chunks is not None
    worker = task.request.hostname
    record = ChunkRecord(
        index=index,
        state="encoding",
        worker=worker,
        task_id=task.request.id,
        started_at=now_iso(),
        offers=offer,
    )
    jobs.save_chunk(manifest.job_id, record)
    emit(
        app,
        "chunk.started",
        job_id=manifest.job_id,
        chunk=index,
        chunks=manifest.chunks.count,
        worker=worker,
        offer=offer,
    )
    return record


def _encode_rungs(
    source: Path, manifest: Manifest, index: int, folder: Path, settings: Settings
) -> tuple[dict[str, Path], float]:
    """Every rung of the chunk from one decode of its range, each output verified to hold the
    chunk's frames; the outputs and ffmpeg's seconds. A range that misses its frames after a seek
    (a demuxer that seeks inexactly) is decoded again from the beginning of the source; fewer
    frames then too mean the source holds less than its packets promise (cut or damaged)."""
    assert manifest.chunks is not None
    started = time.monotonic()
    outputs, frames = _encode_range(source, manifest, index, folder, settings, from_start=False)
    expected = manifest.chunks.frames[index]
    if frames != expected and manifest.chunks.decode_range(index)[0] > 0:
        logger.warning(
            "job %s chunk %d: %d frames after a seek, not %d; decoding it from the start",
            manifest.job_id,
            index,
            frames,
            expected,
        )
        outputs, frames = _encode_range(source, manifest, index, folder, settings, True)
    if frames != expected:
        code = "truncated_source" if frames < expected else "chunk_incomplete"
        raise EncodeError(
            code, f"chunk {index}: the source's packets hold {expected} frames, {frames} decode"
        )
    return outputs, time.monotonic() - started


def _encode_range(
    source: Path, manifest: Manifest, index: int, folder: Path, settings: Settings, from_start: bool
) -> tuple[dict[str, Path], int]:
    """Encode the chunk's rungs; the outputs, and the frames they hold (the fewest, if they
    differ)."""
    assert manifest.chunks is not None and manifest.source.probe is not None
    plans = [RenditionPlan(r.name, r.width, r.height, r.video_kbps) for r in chunk_rungs(manifest)]
    outputs = {plan.name: folder / f"{plan.name}.ts" for plan in plans}
    argv = encoder.chunk_encode_args(
        source, manifest.source.probe, manifest.chunks, index, plans, outputs, settings, from_start
    )
    try:
        process.run(
            argv,
            timeout_s=settings.encode_time_limit_s + encoder.FFMPEG_TIMEOUT_MARGIN_S,
            on_progress=lambda block: None,
            watch_dir=folder,
            max_output_bytes=settings.max_output_bytes,
        )
    except process.ProcessFailed as exc:
        raise EncodeError("encode_failed", f"ffmpeg failed on chunk {index}: {exc}") from None
    # each chunk is verified as it finishes
    frames = min(video_packets(path, settings, trusted=True).frames for path in outputs.values())
    return outputs, frames


def _lost(task: Task, jobs: JobStore, job_id: str, index: int, worker: str | None) -> bool:
    """Whether the other offer finished first (its outputs are already there: deterministic
    keys), or the job is even done: uploading now would leave objects finalize removed."""
    won = jobs.load_chunk(job_id, index)
    if (won is not None and won.state == "completed" and won.task_id != task.request.id) or (
        load_job(jobs, job_id).state == "completed"
    ):
        winner = won.worker if won is not None else None
        emit(app, "chunk.discarded", job_id=job_id, chunk=index, worker=worker, winner=winner)
        return True
    return False


@app.task(name="encodeq.encode_audio", bind=True, **retry_options())
def encode_audio(self: Task, job_id: str) -> None:
    """The whole source's audio, once: no per-chunk audio, so nothing to click at the seams."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = chunked_manifest(jobs, job_id)
    if manifest is None:
        return
    reopen_if_replayed(self, jobs, manifest)
    if manifest.state == "completed":
        return
    done = jobs.load_chunk(job_id, AUDIO)
    if done is not None and done.state == "completed":
        join_when_done(jobs, manifest)
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
        _encode_audio(source, manifest.source.probe, out, settings)
        host_cache.put(storage, job_id, UPLOADS, audio_key(job_id), out, "video/mp2t")
        remove_if_ended(jobs, job_id)  # a late copy's audio must not outlive its job
    record.state, record.seconds = "completed", round(time.monotonic() - started, 3)
    jobs.save_chunk(job_id, record)
    join_when_done(jobs, manifest)


def _encode_audio(source: Path, probe: ProbeResult | None, out: Path, settings: Settings) -> None:
    assert probe is not None  # recorded by the probe before any chunk task was published
    try:
        process.run(
            joining.audio_args(source, probe, out, settings),
            timeout_s=settings.encode_time_limit_s + encoder.FFMPEG_TIMEOUT_MARGIN_S,
            on_progress=lambda block: None,
        )
    except process.ProcessFailed as exc:
        raise EncodeError("encode_failed", f"ffmpeg failed on the audio: {exc}") from None


def join_when_done(jobs: JobStore, manifest: Manifest, progress_from: str | None = None) -> None:
    """Publish one join per rung when every chunk (and the audio) is done.

    Each chunk task writes its record before it reads the others, so whoever finishes last sees
    them all; two may both see it and both publish: joins are idempotent. ``progress_from``: the
    worker of a chunk just completed, which reports every rung's progress (chunks done).
    """
    assert manifest.chunks is not None
    job_id = manifest.job_id
    records = [jobs.load_chunk(job_id, i) for i in range(manifest.chunks.count)]
    done = sum(1 for r in records if r is not None and r.state == "completed")
    if progress_from is not None:
        for r in chunk_rungs(manifest):  # watch and the dashboard draw chunk progress per rung
            percent = round(100.0 * done / manifest.chunks.count, 1)
            emit(
                app,
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
    if manifest.source.probe is not None and manifest.source.probe.has_audio:
        audio = jobs.load_chunk(job_id, AUDIO)
        if audio is None or audio.state != "completed":
            return
    joined = {r.name for r in chunk_rungs(manifest)}
    for name in window.rungs_lowest_first(manifest):  # the lowest is playable first
        if name in joined:
            join.apply_async(args=[job_id, name])
