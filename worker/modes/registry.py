"""Which mode encodes a job, and the one hand-over between modes.

``choose_mode`` resolves the mode (the upload's choice, else by the source's length);
``fan_out`` runs the job's mode, and when that mode gives the job up (``FallBack``) hands it to
per-rung mode, which encodes any source the probe accepted. The modes never call each other.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from config.settings import get_settings
from core.events import emit
from core.job_model import EncodeMode
from worker.app import app
from worker.modes.chunked.strategy import ChunkedMode
from worker.modes.per_rung import PerRungMode
from worker.modes.strategy import EncodeStrategy, FanOut, ModePlan
from worker.task_support import load_job

logger = logging.getLogger(__name__)

STRATEGIES: dict[EncodeMode, EncodeStrategy] = {
    "per-rung": PerRungMode(),
    "chunked": ChunkedMode(),
}
#: Where a job goes when its mode gives it up: one encode per rung, from the source.
LAST_RESORT: EncodeMode = "per-rung"


def choose_mode(requested: EncodeMode | None, duration: float) -> EncodeMode:
    """The upload's choice, else chunked for sources long enough that it pays (bench_chunked)."""
    if requested is not None:
        return requested
    return "chunked" if duration >= get_settings().chunked_min_duration_s else "per-rung"


def strategy(mode: EncodeMode) -> EncodeStrategy:
    return STRATEGIES[mode]


def fan_out(job: FanOut, plan: ModePlan) -> None:
    """Publish the job's tasks in its mode; if the mode gives up, in the last resort's."""
    assert job.manifest.mode is not None
    fallback = strategy(job.manifest.mode).fan_out(job, plan)
    if fallback is not None:
        _hand_over(job, fallback.reason)


def _hand_over(job: FanOut, reason: str) -> None:
    """The job goes per rung rather than fail. Tasks of its mode already published find it no
    longer in that mode and finish without doing anything."""
    current = load_job(job.jobs, job.job_id)
    current.mode, current.chunks, current.mode_reason = LAST_RESORT, None, reason
    current.source.frames = None
    job.jobs.save(current)
    logger.warning("job %s: %s; encoding it per rung instead", job.job_id, reason)
    emit(app, "job.mode_changed", job_id=job.job_id, mode=LAST_RESORT, reason=reason)
    assert current.source.probe is not None
    last = strategy(LAST_RESORT)
    plan = last.plan(job.source, current.source.probe, current.window or 1)
    last.fan_out(replace(job, manifest=current), plan)
