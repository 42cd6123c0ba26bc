"""Per-rung mode: one ``encode`` task per rung, each decoding the whole source, on competing
workers; the last to finish publishes finalize.

Every encode is safe to run twice (at-least-once delivery means it will be, sometimes): its outputs
go to deterministic keys and are overwritten, and a duplicate of a completed rung does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from celery import Task

from config.ladder import RenditionPlan
from config.retry_policy import retry_options
from config.settings import Settings, get_settings
from config.topology import ENCODE_RUNG_TASK
from core import metrics
from core.errors import EncodeError
from core.events import emit
from core.intermediates import remove_if_ended
from core.job_model import Manifest, ProbeResult, Rendition
from core.layout import PLAYLIST_NAME, rendition_prefix
from core.manifest import JobStore
from core.storage import Storage
from worker import encoder, host_cache, lanes, process, window
from worker.app import app
from worker.finalize import rendition_done, rendition_to_do, rung_playable
from worker.modes.strategy import FallBack, FanOut, ModePlan
from worker.segment_upload import SegmentUploader
from worker.task_support import load_job, workdir

#: How often a running encode writes its progress into its rendition record (events go faster).
RECORD_PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class WholeSource:
    """Per-rung mode's plan: nothing to cut, nothing to count."""

    chunks: None = None
    frames: None = None


class PerRungMode:
    """Per-rung mode as an encode strategy (worker/modes/strategy.py)."""

    def plan(self, source: Path, probe: ProbeResult, consumers: int) -> WholeSource:
        return WholeSource()

    def fan_out(self, job: FanOut, plan: ModePlan) -> FallBack | None:
        """One encode per rung, lowest first, a window of them at a time (worker/window.py);
        per-rung mode never falls back (it is where others fall back to)."""
        rungs = window.rungs_lowest_first(job.manifest)
        window.publish_first(job.manifest, len(rungs), _publisher(job.manifest, rungs))
        return None


def _publisher(manifest: Manifest, rungs: list[str]) -> Callable[[int], None]:
    def publish(index: int) -> None:
        lane = lanes.lane_of(manifest)
        encode.apply_async(args=[manifest.job_id, rungs[index]], queue=lane)

    return publish


def _publish_next(task: Task, jobs: JobStore, manifest: Manifest, rendition: str) -> None:
    """The rung ``window`` places after this one, unless it started (worker/window.py). A
    chunked job's whole rung has none: its other rungs are chunks."""
    if manifest.mode != "per-rung":
        return
    rungs = window.rungs_lowest_first(manifest)

    def started(index: int) -> bool:
        record = jobs.load_rendition(manifest.job_id, rungs[index])
        return record is not None and record.state != "pending"

    publish = _publisher(manifest, rungs)
    window.publish_after(task, manifest, rungs.index(rendition), len(rungs), started, publish)


@app.task(name=ENCODE_RUNG_TASK, bind=True, **retry_options())
def encode(self: Task, job_id: str, rendition: str) -> None:
    """Encode one rung to HLS and upload it under deterministic keys; trigger finalize when last."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = load_job(jobs, job_id)
    planned = rendition_to_do(self, jobs, manifest, rendition)
    if planned is None:  # done already: a redelivery still owes the rung after it
        _publish_next(self, jobs, manifest, rendition)
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
    emit(app, "rendition.started", job_id=job_id, rendition=rendition, worker=record.worker)
    plan = RenditionPlan(record.name, record.width, record.height, record.video_kbps)
    settings = get_settings()
    on_progress = _progress(jobs, job_id, record)
    probe = manifest.source.probe
    assert probe is not None  # the probe recorded it before it published this task
    with workdir(job_id) as folder:
        source = host_cache.local_source(storage, job_id, manifest.source.uri)
        out_dir = folder / rendition
        # the rung plays from its first segment on (worker/finalize.py)
        live = partial(rung_playable, storage, jobs, manifest, record, folder=out_dir)
        prefix = rendition_prefix(job_id, rendition)
        uploads = SegmentUploader(storage, out_dir, prefix, out_dir / PLAYLIST_NAME, live)
        try:
            with uploads:
                started = time.monotonic()
                try:
                    result = encoder.encode(source, probe, plan, out_dir, settings, on_progress)
                except process.ProcessFailed as exc:
                    raise EncodeError("encode_failed", f"ffmpeg failed: {exc}") from None
                metrics.rung_encoded(rendition, time.monotonic() - started, result.stats.duration)
                playlist_uri = uploads.finish(result.folder / PLAYLIST_NAME)
        finally:  # however it ends: a late copy's live playlist must not outlive its job
            if uploads.wrote_live:
                remove_if_ended(jobs, job_id)
    record = _completed(record, result, playlist_uri, probe, plan, settings)
    rendition_done(jobs, job_id, record, playlist_uri, list(planned))
    _publish_next(self, jobs, manifest, rendition)


def _progress(jobs: JobStore, job_id: str, record: Rendition) -> Callable[[encoder.Progress], None]:
    """What ffmpeg's progress drives: an event every ``progress_interval_s``, the rendition's
    record every ``RECORD_PROGRESS_EVERY_S``."""
    settings = get_settings()
    last = {"event": 0.0, "record": time.monotonic()}

    def on_progress(p: encoder.Progress) -> None:
        now = time.monotonic()
        if now - last["event"] >= settings.progress_interval_s:
            last["event"] = now
            emit(
                app,
                "rendition.progress",
                job_id=job_id,
                rendition=record.name,
                worker=record.worker,
                progress=round(p.percent, 1),
                fps=p.fps,
                speed=p.speed,
            )
        if now - last["record"] >= RECORD_PROGRESS_EVERY_S:
            last["record"] = now
            record.progress = round(p.percent, 1)
            jobs.save_rendition(job_id, record)

    return on_progress


def _completed(
    record: Rendition,
    result: encoder.EncodedRendition,
    playlist_uri: str,
    probe: ProbeResult,
    plan: RenditionPlan,
    settings: Settings,
) -> Rendition:
    """The rung's record once its playlist is published."""
    return record.model_copy(
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
            "encoder": {**encoder.encoder_settings(probe, plan, settings), "mode": "per-rung"},
        }
    )
