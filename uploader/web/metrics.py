"""The web service's Prometheus metrics (``GET /metrics``, routes/metrics.py): what the uploader
sees, computed when Prometheus asks. The names and their meaning are in core/metrics.py.

**Jobs by state is a gauge read from the job store**, not counters fed by events. The store is
the truth: events are best effort, a service started late never saw the earlier ones, and a
restart would zero them. Read from the store, the numbers count every job however it was
submitted (``encodeq upload``, this page, another replica of this service), and every replica
reports the same. The cost: a listing of the jobs bucket and a read of each job not completed
nor cancelled (those never change again, so they are remembered), at most once every
``JOBS_EVERY_S`` however often anyone scrapes. A failed job is read each time: a replay reopens it.

**Queue depths come from the service's live model** (core/monitor.py, which the events hub
samples every second): a scrape costs the broker nothing, and shows nothing while the hub is
disconnected (the samples would be old). **Uploads** are counted by the upload route.

Open, like ``/api/health``: no token. Prometheus scrapes without one by default, and a token
generated at each start (the default) could not be in its configuration. Nothing here is private:
counts with labels from small fixed sets, no job id, file name, host name or error message. The
other guards still apply (trusted ``Host`` names, no cross-origin reads: no CORS).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core import metrics as names
from core.job_model import JobState, Manifest
from core.manifest import JobStore
from uploader.web.hub import EventHub

logger = logging.getLogger(__name__)

#: The job store is read at most this often (s); scrapes in between get the last counts.
JOBS_EVERY_S = 5.0
#: Parallel reads of job documents.
READ_THREADS = 8
#: States a job never leaves: remembered instead of read again.
FINAL_STATES = ("completed", "cancelled")
STATES: tuple[str, ...] = get_args(JobState)


@dataclass
class JobCounts:
    by_state: Counter[str] = field(default_factory=Counter)
    #: When the oldest job still ``queued`` was created (epoch seconds), None when none waits.
    oldest_queued: float | None = None
    read_at: float = 0.0


class WebMetrics:
    """A collector of the service's own registry (one per app: apps built side by side in one
    process, as the tests do, never clash)."""

    def __init__(self, jobs: JobStore, hub: EventHub, every_s: float = JOBS_EVERY_S) -> None:
        self.jobs, self.hub, self.every_s = jobs, hub, every_s
        self.registry = CollectorRegistry(auto_describe=False)
        self._uploads: Counter[tuple[str, str]] = Counter({("accepted", ""): 0})
        self._final: dict[str, str] = {}
        self._counts: JobCounts | None = None
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self.registry.register(self)

    def expose(self) -> bytes:
        """The text a scrape gets."""
        return generate_latest(self.registry)

    def upload(self, accepted: bool, code: str = "") -> None:
        """An upload accepted, or refused with its error code (``busy``, ``too_large``...)."""
        with self._lock:
            self._uploads["accepted" if accepted else "refused", "" if accepted else code] += 1

    # --- the collector ------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._queues()
        labels = ["result", "reason"]
        uploads = CounterMetricFamily(names.UPLOADS, _help(names.UPLOADS), labels=labels)
        with self._lock:
            for (result, reason), count in sorted(self._uploads.items()):
                uploads.add_metric([result, reason], count)
        yield uploads

    def _jobs(self) -> Iterator[Metric]:
        try:
            counts = self.job_counts()
        except Exception:  # S3 away: say so, and no job numbers rather than wrong ones
            logger.warning("metrics: could not read the job store", exc_info=True)
            counts = None
        yield _gauge(names.JOB_STORE_UP, 0 if counts is None else 1)
        if counts is None:
            return
        jobs = GaugeMetricFamily(names.JOBS, _help(names.JOBS), labels=["state"])
        for state in STATES:
            jobs.add_metric([state], counts.by_state.get(state, 0))
        yield jobs
        waited = 0.0 if counts.oldest_queued is None else time.time() - counts.oldest_queued
        yield _gauge(names.OLDEST_QUEUED_JOB, max(0.0, waited))

    def _queues(self) -> Iterator[Metric]:
        connected = self.hub.connected.is_set()
        yield _gauge(names.BROKER_CONNECTED, int(connected))
        if not connected:
            return
        depths = list(self.hub.monitor.queues)
        pairs = ((names.QUEUE_MESSAGES, "messages"), (names.QUEUE_CONSUMERS, "consumers"))
        for name, attribute in pairs:
            family = GaugeMetricFamily(name, _help(name), labels=["queue"])
            for depth in depths:
                value = getattr(depth, attribute)
                if value is not None:  # None: the queue does not exist (yet)
                    family.add_metric([depth.name], value)
            yield family

    # --- the job store ------------------------------------------------------------------------
    def job_counts(self) -> JobCounts:
        """Jobs by state, read at most every ``every_s`` (one reader at a time)."""
        with self._reading:
            if self._counts is None or time.monotonic() - self._counts.read_at >= self.every_s:
                self._counts = self._read_jobs()
            return self._counts

    def _read_jobs(self) -> JobCounts:
        ids = self.jobs.job_ids()
        listed = set(ids)
        self._final = {job: state for job, state in self._final.items() if job in listed}
        unsettled = [job for job in ids if job not in self._final]
        with ThreadPoolExecutor(READ_THREADS) as pool:
            manifests = [m for m in pool.map(self.jobs.load_job, unsettled) if m is not None]
        counts = JobCounts(Counter(self._final.values()), read_at=time.monotonic())
        for manifest in manifests:
            counts.by_state[manifest.state] += 1
            if manifest.state in FINAL_STATES:
                self._final[manifest.job_id] = manifest.state
            elif manifest.state == "queued":
                created = _epoch(manifest)
                oldest = counts.oldest_queued
                if created is not None and (oldest is None or created < oldest):
                    counts.oldest_queued = created
        return counts


def _epoch(manifest: Manifest) -> float | None:
    try:
        return datetime.fromisoformat(manifest.created_at).timestamp()
    except (TypeError, ValueError):
        return None


def _help(name: str) -> str:
    return names.WEB_METRICS[name][1]


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, _help(name), value=value)
