"""The start of every job, in either mode: ``probe`` claims the job, probes the upload under
limits (worker/probe.py), resolves the mode, records what it found with the mode's plan and the
rungs (never an upscale), and has the mode fan out its tasks (worker/modes/registry.py).

Safe to run twice: a second probe message of a job (the janitor re-publishes one for a job that
looks orphaned) finds it claimed and does nothing.
"""

from __future__ import annotations

import logging

from celery import Task

from config.ladder import choose_renditions
from config.retry_policy import retry_options
from config.settings import get_settings
from config.topology import PROBE_TASK
from core.errors import PUBLISH_ERRORS
from core.events import emit
from core.job_model import Manifest, ProbeResult, Rendition
from core.manifest import JobStore
from core.storage import Storage
from worker import host_cache, lanes, window
from worker.app import app
from worker.modes import registry
from worker.modes.strategy import FanOut, ModePlan
from worker.probe import probe as probe_file
from worker.replay_rule import reopen_if_replayed
from worker.task_support import load_job, workdir

logger = logging.getLogger(__name__)


@app.task(name=PROBE_TASK, bind=True, **retry_options())
def probe(self: Task, job_id: str) -> None:
    """ffprobe the upload under limits, pick the rungs (never upscale), fan out the encodes."""
    storage = Storage()
    jobs = JobStore(storage)
    manifest = _claim(self, jobs, job_id)
    if manifest is None:
        return
    emit(app, "job.probing", job_id=job_id, worker=self.request.hostname)
    with workdir(job_id) as folder:
        source = host_cache.local_source(storage, job_id, manifest.source.uri)
        found = probe_file(source, get_settings())
        manifest.mode = registry.choose_mode(manifest.mode, found.duration)
        # one count of the job's lane: the plan's and the window's
        consumers = lanes.encode_consumers(lanes.lane_for(manifest.priority, found.duration))
        plan = registry.strategy(manifest.mode).plan(source, found, consumers)
        _record(jobs, manifest, found, plan, window.planned_window(consumers))
        emit(
            app,
            "job.encoding",
            job_id=job_id,
            renditions=[r.model_dump(mode="json") for r in manifest.renditions],
            source=manifest.source.model_dump(mode="json"),
        )
        registry.fan_out(FanOut(storage, jobs, manifest, source, folder), plan)


def _claim(task: Task, jobs: JobStore, job_id: str) -> Manifest | None:
    """The job, now ``probing`` and claimed by this probe; None when there is nothing to do."""
    manifest = load_job(jobs, job_id)
    reopen_if_replayed(task, jobs, manifest, "queued")
    if manifest.state == "failed" and manifest.error and manifest.error.code in PUBLISH_ERRORS:
        jobs.reopen(manifest, "queued")  # the upload's publish went through after all
    if manifest.state in ("completed", "failed"):
        return None  # done, or failed (only a replay, above, puts a failed job back to work)
    if manifest.state != "queued" and manifest.probe_task not in (None, task.request.id):
        # Another probe claimed the job: the janitor re-published one for a job that looked
        # orphaned, and this is the original after all (or the reverse). One of them is enough;
        # a redelivery of the claimer (same task id) goes on.
        logger.info("probe(%s): claimed by probe %s; nothing to do", job_id, manifest.probe_task)
        return None
    manifest.state, manifest.error, manifest.probe_task = "probing", None, task.request.id
    jobs.save(manifest)
    return manifest


def _record(
    jobs: JobStore, manifest: Manifest, found: ProbeResult, plan: ModePlan, job_window: int
) -> None:
    """What the probe found, the mode's plan, the rungs and the job's window, saved before any
    task is published."""
    manifest.source = manifest.source.model_copy(update={"probe": found, "frames": plan.frames})
    manifest.chunks = plan.chunks
    manifest.renditions = [
        Rendition(name=p.name, width=p.width, height=p.height, video_kbps=p.video_kbps)
        for p in choose_renditions(found.width, found.height)
    ]
    manifest.window = job_window
    manifest.state = "encoding"
    jobs.save(manifest)
