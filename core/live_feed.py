"""Following jobs: the one loop that keeps a ``Monitor`` current, for every view that follows.

``encodeq watch``, ``encodeq upload --wait`` (and the demo) and the web page's event stream all
follow jobs the same way, through this feed. It subscribes first (a private auto-deleted queue on
``encodeq.events``: pub-sub, it takes no work from anyone), then reads the manifests, so nothing
that happens in between is missed. From then on events drive the model; the manifests of jobs in
flight are re-read now and then (events are best effort and may be lost, manifests are the truth);
queue depths are sampled by passive declares. A view only renders the model or forwards events.
When the broker node the feed is connected to goes away, the subscription moves to another node
of the failover list (core/events.py), and the feed re-reads the manifests of jobs in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kombu import Connection

from core.events import EventSubscription
from core.job_model import Manifest
from core.manifest import JobStore
from core.monitor import Monitor
from core.queue_depths import queue_depths

#: The lifecycle events a live view binds to; ``task.*``: every task run (the timeline's bars).
LIVE_EVENTS = ("job.*", "rendition.*", "chunk.*", "task.*")
#: Finished jobs loaded when a view of every job starts: the latest failures, so a watcher sees
#: what just broke.
RECENT_FAILED = 5
#: Manifests read at once (each is a few S3 round trips).
READ_PARALLEL = 8


def load_manifests(jobs: JobStore, job_ids: Iterable[str]) -> list[Manifest]:
    """Manifests of ``job_ids``, read in parallel; a job without one is left out."""
    job_ids = list(job_ids)
    if not job_ids:
        return []
    with ThreadPoolExecutor(READ_PARALLEL) as pool:
        found = list(pool.map(jobs.load, job_ids))
    return [m for m in found if m is not None]


@dataclass
class Tick:
    """What one turn of the feed brought: the events applied, in order, and the queue-depth
    sample taken (None when none was due)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    queues: dict[str, Any] | None = None


class LiveFeed:
    """Events, manifests and queue depths into one ``Monitor``; ``with LiveFeed(...) as feed:``.

    ``sample_every_s`` None: queue depths are sampled only when asked (``sample_queues``).
    ``on_poll_error``: what to do when re-reading manifests fails (storage down); None raises.
    """

    def __init__(
        self,
        connection: Connection,
        jobs: JobStore,
        monitor: Monitor,
        poll_every_s: float,
        sample_every_s: float | None = None,
        on_poll_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.connection = connection
        self.jobs = jobs
        self.monitor = monitor
        self.poll_every_s = poll_every_s
        self.sample_every_s = sample_every_s
        self.on_poll_error = on_poll_error
        self._subscription = EventSubscription(connection, LIVE_EVENTS)
        self._next_poll = time.monotonic() + poll_every_s
        self._next_sample = 0.0
        #: Ended jobs whose manifest was read, with the view's ``updated_at`` at the time: read
        #: again only when something about the job changed since.
        self._confirmed: dict[str, tuple[str, Manifest]] = {}

    def __enter__(self) -> LiveFeed:
        self._subscription.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._subscription.__exit__(*exc)

    @property
    def queue_name(self) -> str:
        """The subscription's private queue (tests wait for it to exist)."""
        return str(self._subscription.queue.name)

    # --- inputs --------------------------------------------------------------------------------
    def load(self, job_ids: Iterable[str] | None = None) -> None:
        """The given jobs from their manifests; None: every job in flight plus the latest
        failures. Call it once subscribed, so nothing between the two is missed."""
        if job_ids is not None:
            for manifest in load_manifests(self.jobs, job_ids):
                self.monitor.load_manifest(manifest)
            return
        manifests = load_manifests(self.jobs, self.jobs.job_ids())
        running = [m for m in manifests if not m.finished]
        failed = sorted((m for m in manifests if m.state == "failed"), key=lambda m: m.updated_at)
        for manifest in [*failed[-RECENT_FAILED:], *running]:
            self.monitor.load_manifest(manifest)

    def sample_queues(self) -> dict[str, Any]:
        """Sample the queue depths now; returns the sample (also kept in the monitor's history)."""
        self.monitor.set_queues(queue_depths(self.connection))
        return dict(self.monitor.queue_history[-1])

    def tick(self, timeout: float = 0.25) -> Tick:
        """Apply the events that arrive within ``timeout``; re-read manifests and sample queue
        depths when they are due."""
        tick = Tick()
        gaps = self._subscription.resubscribed
        for event in self._subscription.events(timeout=timeout):
            if self.monitor.apply(event) is not None:
                tick.events.append(event)
            elif self.monitor.job_filter is None:
                tick.events.append(event)  # not about a job: still news for a view of everything
        now = time.monotonic()
        if self.sample_every_s is not None and now >= self._next_sample:
            try:
                tick.queues = self.sample_queues()
            except self._subscription.lost_connection_errors:
                self._subscription.resubscribe()  # its node went away between two events
            self._next_sample = now + self.sample_every_s
        if self._subscription.resubscribed != gaps:
            self._next_poll = now  # subscribed again: events of the gap are lost, re-read now
        if now >= self._next_poll:
            self._refresh_in_flight()
            self._next_poll = now + self.poll_every_s
        return tick

    def _refresh_in_flight(self) -> None:
        try:
            for manifest in load_manifests(self.jobs, self.monitor.in_flight()):
                self.monitor.load_manifest(manifest)
        except Exception as exc:
            if self.on_poll_error is None:
                raise
            self.on_poll_error(exc)  # the next poll tries again

    # --- outputs -------------------------------------------------------------------------------
    def ended(self, job_ids: Iterable[str]) -> dict[str, Manifest]:
        """The manifests of those ``job_ids`` that ended, by job id.

        A job is only taken as ended once its manifest says so (the manifest is what a user reads
        next), and that manifest is read once the view says the job ended, or when the job is not
        in view at all (kept out by the model's limit on finished jobs).
        """
        ended: dict[str, Manifest] = {}
        to_read: list[str] = []
        for job_id in job_ids:
            view = self.monitor.job(job_id)
            confirmed = self._confirmed.get(job_id)
            if view is not None and confirmed and confirmed[0] == view.updated_at:
                ended[job_id] = confirmed[1]
            elif view is None or view.finished:
                to_read.append(job_id)
        for manifest in load_manifests(self.jobs, to_read):
            view = self.monitor.load_manifest(manifest)
            if manifest.finished:
                ended[manifest.job_id] = manifest
                if view is not None:
                    self._confirmed[manifest.job_id] = (view.updated_at, manifest)
        return ended
