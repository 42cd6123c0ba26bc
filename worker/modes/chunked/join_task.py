"""Chunked mode's fan-in per rung: ``join`` concatenates a rung's encoded chunks (and the audio)
into its HLS rendition (joining.py), checks the seams (seams.py) and publishes it, or fails the
job; the last join to finish publishes finalize."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from celery import Task

from config.ladder import RenditionPlan
from config.retry_policy import retry_options
from config.settings import Settings, get_settings
from core.errors import EncodeError
from core.events import emit
from core.job_model import ChunkPlan, Manifest, ProbeResult, Rendition
from core.layout import RENDITIONS, UPLOADS, audio_key, chunk_output_key, rendition_prefix
from core.manifest import JobStore
from core.storage import Storage
from worker import encoder, host_cache, process
from worker.app import app
from worker.finalize import rendition_done, rendition_to_do, rung_playable
from worker.hls import MediaPlaylistStats
from worker.modes.chunked import joining, seams
from worker.modes.chunked.chunked_job import chunked_manifest
from worker.segment_upload import SegmentUploader
from worker.task_support import workdir


@dataclass(frozen=True)
class _Published:
    """A joined rung in storage: its playlist's URI, what the playlist holds, its codecs."""

    playlist: str
    stats: MediaPlaylistStats
    codecs: str


@app.task(name="encodeq.join", bind=True, **retry_options())
def join(self: Task, job_id: str, rendition: str) -> None:
    """Concatenate a rung's chunks (+ audio) into HLS, check the seams, publish; else fail."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = chunked_manifest(jobs, job_id)
    if manifest is None or (manifest.chunks and rendition in manifest.chunks.whole_rungs):
        return  # not chunked (any more), or a rung its own task encodes from the whole source
    planned = rendition_to_do(self, jobs, manifest, rendition)
    if planned is None:
        return
    record = planned[rendition].model_copy(
        update={"state": "encoding", "worker": self.request.hostname, "task_id": self.request.id}
    )
    jobs.save_rendition(job_id, record)
    emit(app, "rendition.started", job_id=job_id, rendition=rendition, worker=record.worker)
    with workdir(job_id) as folder:
        published = _join_and_publish(storage, jobs, manifest, record, folder, get_settings())
        # playable now (the job's live master lists it), while other joins run;
        # its CODECS are known from the seam check, no segment needs probing for them
        record.codecs = published.codecs
        rung_playable(storage, jobs, manifest, record, published.playlist, folder / rendition)
    record = record.model_copy(
        update={
            "state": "completed",
            "progress": 100.0,
            "playlist": published.playlist,
            "bandwidth": published.stats.peak_bps,
            "average_bandwidth": published.stats.average_bps,
            "codecs": published.codecs,
            "duration": published.stats.duration,
            "segments": published.stats.segments,
            "size_bytes": published.stats.size_bytes,
        }
    )
    rendition_done(jobs, job_id, record, published.playlist, list(planned))


def _join_and_publish(
    storage: Storage,
    jobs: JobStore,
    manifest: Manifest,
    record: Rendition,
    folder: Path,
    settings: Settings,
) -> _Published:
    """Join the rung in ``folder``, check its seams (a rung that fails is recorded failed and
    never published), upload it. ``record`` gets the seam check and the encoder settings.
    Segments go up while the join writes them and the seams are checked; the playlist, which
    makes the rung playable, only once the check passed (a rung that fails leaves nothing)."""
    chunks, probe = manifest.chunks, manifest.source.probe
    assert chunks is not None and probe is not None
    job_id, rendition = manifest.job_id, record.name
    files, audio = _fetch_parts(storage, job_id, rendition, chunks, probe, folder)
    out_dir, prefix = folder / rendition, rendition_prefix(job_id, rendition)
    uploader = SegmentUploader(storage, out_dir, prefix)
    try:
        with uploader:
            playlist = joining.join(files, chunks.durations, audio, probe, out_dir, settings)
            check, video = seams.check(
                playlist,
                manifest.source.frames or sum(chunks.frames),
                chunks.starts[1:],
                probe.frame_rate,
                probe.has_audio,
                settings,
                chunks.seam_intervals,
            )
    except process.ProcessFailed as exc:
        storage.remove_prefix(RENDITIONS, prefix)
        raise EncodeError("join_failed", f"ffmpeg could not join {rendition}: {exc}") from None
    plan = RenditionPlan(record.name, record.width, record.height, record.video_kbps)
    record.seam_check = check
    record.encoder = {
        **encoder.encoder_settings(probe, plan, settings),
        "mode": "chunked",
        "chunks": chunks.count,
        "chunk_seconds": chunks.seconds,
        "split": chunks.split,
    }
    if not check.passed:
        storage.remove_prefix(RENDITIONS, prefix)
        record.state = "failed"
        jobs.save_rendition(job_id, record)
        problems = "; ".join(check.problems)
        raise EncodeError("seam_check_failed", f"{rendition} failed its seam check: {problems}")
    stats = encoder.media_playlist_stats(playlist)
    encoder.check_complete(stats, probe)
    return _Published(uploader.finish(playlist), stats, encoder.codecs_from(video, probe.has_audio))


def _fetch_parts(
    storage: Storage,
    job_id: str,
    rendition: str,
    chunks: ChunkPlan,
    probe: ProbeResult,
    folder: Path,
) -> tuple[list[Path], Path | None]:
    """The rung's encoded chunks, local and named in order (for the concat list), and the audio."""
    parts = folder / "parts"
    parts.mkdir()
    files = []
    for index in range(chunks.count):
        key = chunk_output_key(job_id, rendition, index)
        files.append(host_cache.fetch_as(storage, job_id, UPLOADS, key, parts / f"c{index:05d}.ts"))
    audio = None
    if probe.has_audio:
        audio = host_cache.fetch(storage, job_id, UPLOADS, audio_key(job_id))
    return files, audio
