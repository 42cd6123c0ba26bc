"""Chunked mode as an encode strategy (worker/modes/strategy.py): its plan from the source's
packets, and its fan-out (the audio, the straggler watchdog, then each chunk's encode the moment
the chunk is cut)."""

from __future__ import annotations

import logging
from pathlib import Path

from config.settings import get_settings
from core.errors import EncodeError
from core.job_model import ProbeResult
from core.layout import UPLOADS, chunk_source_key
from worker import host_cache, process
from worker.modes.chunked import chunk_plan
from worker.modes.chunked.chunk_plan import SplitPlan
from worker.modes.chunked.chunk_tasks import encode_audio, encode_chunk
from worker.modes.chunked.split import SplitImpossible, split
from worker.modes.chunked.stragglers import watch_chunks
from worker.modes.strategy import FallBack, FanOut, ModePlan
from worker.probe import read_limit_s
from worker.task_support import load_job

logger = logging.getLogger(__name__)


def plan(source: Path, probe: ProbeResult) -> SplitPlan:
    """Where the source will be cut, from its packets (the job records it before any cut).
    Packets ffprobe cannot list plan the job per rung: chunking is a way to encode, not a verdict
    on the source (the per-rung encode gives that)."""
    settings = get_settings()
    allowed = settings.seam_av_tolerance_s + 1 / probe.frame_rate
    if probe.has_audio and probe.av_mismatch_s > allowed:
        return chunk_plan.not_chunked(
            f"audio and video differ by {probe.av_mismatch_s:.3f}s in start or length (chunked "
            "mode encodes them apart and could not keep that)",
            settings,
        )
    try:
        return chunk_plan.plan(source, probe.frame_rate, settings)
    except process.ProcessFailed as exc:
        return chunk_plan.not_chunked(f"ffprobe could not list the packets: {exc}", settings)


def fan_out(job: FanOut, plan: ModePlan) -> FallBack | None:
    """Publish the audio and the straggler watchdog, then cut the source and publish each chunk's
    encode the moment the chunk is uploaded: the first chunks encode while the rest is cut.

    The job (with the plan) is recorded before this runs, so every chunk task finds its chunk.
    Falls back when the plan says the source cannot be chunked, or the split cannot meet it.
    """
    assert isinstance(plan, SplitPlan)
    if plan.per_rung is not None:
        return FallBack(plan.per_rung)
    _record_span(job, plan)
    probe = job.manifest.source.probe
    if probe is not None and probe.has_audio:  # first: it runs beside the chunks (FIFO queue)
        encode_audio.apply_async(args=[job.job_id])
    settings = get_settings()
    watch_chunks.apply_async(args=[job.job_id, []], countdown=settings.straggler_check_s)

    def ready(index: int, path: Path) -> None:
        key = chunk_source_key(job.job_id, index)
        host_cache.put(job.storage, job.job_id, UPLOADS, key, path, "video/mp4")
        encode_chunk.apply_async(args=[job.job_id, index])

    def accurate_from_here(reason: str) -> None:
        # Recorded before the first accurately cut chunk is published (so before any join can
        # run, and finalize after it); only the plan's fields change.
        current = load_job(job.jobs, job.job_id)
        assert current.chunks is not None
        current.chunks = current.chunks.model_copy(update={"split": "accurate", "reason": reason})
        job.jobs.save(current)
        logger.warning("job %s: %s; cutting the rest accurately", job.job_id, reason)

    try:
        split(job.source, job.folder / "chunks", plan, settings, ready, accurate_from_here)
    except SplitImpossible as exc:
        return FallBack(str(exc))
    except EncodeError as exc:
        if exc.code != "output_too_large":
            raise
        # The lossless split of a long source can outgrow the cap: the split stops there (the
        # cap holds), and the source is encoded per rung, whose encodes obey the cap too.
        return FallBack(f"the split stopped at the output cap: {exc.message}")
    return None


def _record_span(job: FanOut, plan: SplitPlan) -> None:
    """The header said less than the packets hold (within the limit: the plan checked); the chunks
    hold every packet, so the audio and the join's completeness check go by them."""
    probe = job.manifest.source.probe
    assert probe is not None
    if plan.span <= read_limit_s(probe.duration, get_settings()):
        return
    current = load_job(job.jobs, job.job_id)
    assert current.source.probe is not None
    current.source.probe = current.source.probe.model_copy(update={"duration": plan.span})
    job.jobs.save(current)


class ChunkedMode:
    """Chunked mode's plan and fan-out, as the registry holds them."""

    plan = staticmethod(plan)
    fan_out = staticmethod(fan_out)
