"""The janitor: what no single task is there to clean up, done by every worker, idempotently.

* the outbox (worker/outbox.py): failure records and job failures that could not be written while
  S3 was down are written once it answers, within seconds;
* orphaned jobs: a job still ``queued`` long after its last change may have no probe message
  anywhere (the uploader died between writing the manifest and publishing): its probe is published
  again. A probe that finds the job already claimed by another probe does nothing, so a job whose
  first probe was only slow is not encoded twice;
* expired intermediates: the chunk objects of a failed chunked job are kept for a replay for
  ``intermediates_ttl_s``, then removed (a completed job's are removed by finalize:
  worker/intermediates.py).

It runs on a thread of each worker's main process, never in the event loop (S3 calls may block
for seconds during an outage). Several workers may sweep at once: every action is safe to repeat.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import Celery, bootsteps

from config.settings import Settings, get_settings
from config.topology import PROBE_TASK
from core.events import emit
from core.intermediates import remove_intermediates
from core.job_model import Manifest, Requeues
from core.manifest import JobStore
from core.storage import Storage
from worker.failure_handling import flush_outbox

logger = logging.getLogger(__name__)

#: How often the outbox is looked at (cheap: a directory listing).
OUTBOX_EVERY_S = 2.0


def _seconds_since(iso: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(iso)).total_seconds()


@dataclass
class Sweep:
    """What one sweep did (logged, and what the tests read)."""

    requeued: list[str] = field(default_factory=list)
    expired: dict[str, int] = field(default_factory=dict)


def requeue(app: Celery, jobs: JobStore, manifest: Manifest, requeues: Requeues | None) -> int:
    """Publish the probe of a job that stayed queued too long; how often it was. Recorded first
    (so the next sweep waits another ``orphan_after_s``); a publish that fails leaves it for the
    next one. Only the job's requeue record is written, never the job document. Published by
    name, as the uploader does: the message is the contract, not the task's module."""
    count = (requeues.count if requeues else 0) + 1
    jobs.save_requeues(manifest.job_id, Requeues(count=count))
    app.send_task(PROBE_TASK, args=[manifest.job_id])
    emit(app, "job.requeued", job_id=manifest.job_id, requeued=count)
    logger.warning("job %s stayed queued; probe published again (%d)", manifest.job_id, count)
    return count


def sweep(app: Celery, storage: Storage, settings: Settings, now: datetime | None = None) -> Sweep:
    """One pass over the jobs: requeue orphans (published through ``app``), expire failed jobs'
    intermediates, remove cancelled jobs' leftovers."""
    now = now or datetime.now(UTC)
    jobs = JobStore(storage)
    done = Sweep()
    for job_id in jobs.job_ids():
        manifest = jobs.load_job(job_id)
        if manifest is None:
            continue
        age = _seconds_since(manifest.updated_at, now)
        if manifest.state == "queued" and age > settings.orphan_after_s:
            requeues = jobs.load_requeues(job_id)
            if requeues is not None and _seconds_since(requeues.at, now) <= settings.orphan_after_s:
                continue  # published again not long ago: give that probe its time
            requeue(app, jobs, manifest, requeues)
            done.requeued.append(job_id)
        elif manifest.state == "cancelled":  # what a task still uploaded after the cancel
            removed = remove_intermediates(storage, job_id)
            if removed:
                done.expired[job_id] = removed
        elif manifest.state == "failed" and age > settings.intermediates_ttl_s:
            removed = remove_intermediates(storage, job_id)
            if removed:
                done.expired[job_id] = removed
                logger.info(
                    "job %s failed %.0fs ago: removed %d intermediate objects", job_id, age, removed
                )
    return done


class Janitor(bootsteps.StartStopStep):
    """Runs the janitor on a daemon thread of one node's main process per worker."""

    label = "Janitor"

    def include_if(self, parent: Any) -> bool:
        return get_settings().janitor  # one node per worker (worker/nodes.py)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._app: Celery = parent.app
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        self._thread = threading.Thread(target=self._run, name="encodeq-janitor", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        settings = get_settings()
        # Jittered, so workers started together do not all sweep together.
        next_sweep = time.monotonic() + random.uniform(0.2, 1.0) * settings.janitor_interval_s
        while not self._stop.wait(OUTBOX_EVERY_S):
            try:
                flush_outbox(self._app)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + random.uniform(0.5, 1.5) * (
                        settings.janitor_interval_s
                    )
                    sweep(self._app, Storage(), settings)
            except Exception:  # S3 or the broker down: the next round tries again
                logger.warning("janitor round failed", exc_info=True)
