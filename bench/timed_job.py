"""A job timed from upload to completed: what every pipeline benchmark measures.

The stack (vhost and S3 server) and the workers come from the tests' helpers
(``tests/support/stack.py``, ``tests/support/fleet.py``), so a benchmark runs the system exactly
as the suite does.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class JobRun:
    job_id: str
    #: Upload started to job completed, and the upload alone (until the probe was queued).
    seconds: float
    upload_seconds: float
    started_at: float
    #: CPU seconds this process spent meanwhile: the uploader, and the embedded S3 server, which
    #: shares the machine with the workers (MinIO on its own host would not).
    local_cpu_seconds: float


def run_job(source: Path, mode: str | None = None) -> JobRun:
    """Upload ``source`` and wait for its job to complete (a failed job raises).

    The end is taken from the job's ``job.completed`` event, not by polling the manifest: a poll
    every 0.1 s would cost the embedded S3 server, on the same two cores, seconds of CPU per job.
    The manifest is still read every few seconds in case an event is lost (they are best effort).
    """
    # Imported here, not at the top: the benchmarks import this module before isolated_stack
    # points ENCODEQ_* at their own vhost, and the publishing side reads its settings once.
    from kombu import Connection

    from config.settings import Settings
    from core.events import EventSubscription
    from core.manifest import JobStore
    from core.storage import Storage
    from uploader.submit import submit

    storage = Storage()
    jobs = JobStore(storage)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    with (
        Connection(Settings().broker_url) as conn,
        EventSubscription(conn, ("job.completed", "job.failed")) as events,
    ):
        started_at, started = time.time(), time.perf_counter()
        job_id = submit(source, storage, mode=mode).job_id
        uploaded = time.perf_counter() - started
        finished = False
        while not finished:
            finished = any(e.get("job_id") == job_id for e in events.events(timeout=3.0))
            if not finished:
                manifest = jobs.load_job(job_id)
                finished = manifest is not None and manifest.finished
        elapsed = time.perf_counter() - started
    now = resource.getrusage(resource.RUSAGE_SELF)
    manifest = jobs.load_job(job_id)
    if manifest is None or manifest.state != "completed":
        raise RuntimeError(f"job {job_id} failed: {manifest.error if manifest else 'no manifest'}")
    local_cpu = now.ru_utime - cpu.ru_utime + now.ru_stime - cpu.ru_stime
    return JobRun(job_id, elapsed, uploaded, started_at, local_cpu)
