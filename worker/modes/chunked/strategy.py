"""Chunked mode as an encode strategy (worker/modes/strategy.py): its plan from the source's
packets and the fleet, and its fan-out (the lowest rung whole, the audio, the straggler watchdog,
then the first window of chunk encodes: nothing is cut ahead, each chunk task decodes its own
range of the source)."""

from __future__ import annotations

import logging
from pathlib import Path

from config.ladder import choose_renditions, size_order
from config.settings import Settings, get_settings
from config.topology import ENCODE_RUNG_TASK
from core.job_model import ProbeResult
from worker import lanes, process, window
from worker.app import app
from worker.modes.chunked import chunk_plan
from worker.modes.chunked.chunk_plan import RangePlan
from worker.modes.chunked.chunk_tasks import chunk_publisher, encode_audio
from worker.modes.chunked.packets import max_packets, video_packets
from worker.modes.chunked.stragglers import watch_chunks
from worker.modes.strategy import FallBack, FanOut, ModePlan
from worker.probe import read_limit_s
from worker.task_support import load_job

logger = logging.getLogger(__name__)


def plan(source: Path, probe: ProbeResult, consumers: int) -> RangePlan:
    """Which frames each chunk encodes, from the source's packets and the fleet (the job records
    it before any chunk task is published). Packets ffprobe cannot list plan the job per rung:
    chunking is a way to encode, not a verdict on the source (the per-rung encode gives that)."""
    settings = get_settings()
    allowed = settings.seam_av_tolerance_s + 1 / probe.frame_rate
    if probe.has_audio and probe.av_mismatch_s > allowed:
        return chunk_plan.not_chunked(
            f"audio and video differ by {probe.av_mismatch_s:.3f}s in start or length (chunked "
            "mode encodes them apart and could not keep that)"
        )
    try:
        packets = video_packets(source, settings, limit=max_packets(settings))
    except process.ProcessFailed as exc:
        return chunk_plan.not_chunked(f"ffprobe could not list the packets: {exc}")
    planned = chunk_plan.plan_packets(packets, probe.frame_rate, settings, consumers)
    if planned.per_rung is None:
        planned.chunks.whole_rungs = whole_rungs(probe, planned.span, settings)
    return planned


def whole_rungs(probe: ProbeResult, span: float, settings: Settings) -> list[str]:
    """The rungs encoded from the whole source, each by a task of its own (the job's first):
    the lowest, so the job plays from its first segment instead of after every chunk and a join;
    none when it is the only rung (the chunks are the speed), or the source is too long for one
    task to decode it (``lowest_rung_whole_max_s``). In the plan, so the probe records it with
    the chunks once: a chunk task never sees a plan without it."""
    rungs = choose_renditions(probe.width, probe.height)
    if not settings.lowest_rung_whole or len(rungs) < 2 or span > settings.lowest_rung_whole_max_s:
        return []
    return [min(rungs, key=size_order).name]


def fan_out(job: FanOut, plan: ModePlan) -> FallBack | None:
    """Publish the lowest rung's whole-source encode, the audio, the straggler watchdog and the
    first window of chunk encodes. The job (with the plan) is recorded before this runs, so
    every chunk task finds its range. Falls back when the plan says the source cannot be
    chunked."""
    assert isinstance(plan, RangePlan)
    if plan.per_rung is not None:
        return FallBack(plan.per_rung)
    _record_span(job, plan)
    lane = lanes.lane_of(job.manifest)
    for rung in plan.chunks.whole_rungs:  # first: it plays seconds after the upload
        app.send_task(ENCODE_RUNG_TASK, args=[job.job_id, rung], queue=lane)
    probe = job.manifest.source.probe
    if probe is not None and probe.has_audio:  # outside the window: one short task
        encode_audio.apply_async(args=[job.job_id], queue=lane)
    watch_chunks.apply_async(args=[job.job_id, []], countdown=get_settings().straggler_check_s)
    window.publish_first(job.manifest, plan.chunks.count, chunk_publisher(job.manifest))
    return None


def _record_span(job: FanOut, plan: RangePlan) -> None:
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
