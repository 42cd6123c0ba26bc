"""What a worker tidies on its own host: scratch folders of dead tasks, and the host cache.

``Housekeeping`` is a consumer bootstep (worker/app.py registers it). When the worker's consumer
starts it sweeps the scratch folders no live task holds (worker/scratch.py: a pool process or a
whole worker killed leaves its folder behind) and prunes the host cache by age, then repeats both
every few minutes; and it follows ``job.completed`` / ``job.failed`` / ``job.cancelled`` /
``job.reopened`` on the events exchange through a queue of its own, so a finished job's cache
entries go on every host (worker/host_cache.py), not only where it finished, and a cancelled job's
ffmpeg dies on every host (worker/cancellation.py).

Everything runs on the worker's event loop, in its main process: Celery re-creates the consumer
and its queue after a broker reconnection, and the pool is forked from that same thread, so no
fork ever copies a lock this module holds.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from typing import Any

from celery import bootsteps
from kombu import Consumer, Queue, binding

from config.topology import EVENTS_EXCHANGE
from worker import cancellation, host_cache, scratch

logger = logging.getLogger(__name__)

#: How often dead tasks' scratch folders are swept and the cache pruned (besides at start).
SWEEP_EVERY_S = 120.0
#: Events that end a job (its entries go) or reopen it (they are useful again).
ENDED = ("job.completed", "job.failed", "job.cancelled")
REOPENED = "job.reopened"
CANCELLED = "job.cancelled"


def sweep() -> None:
    """Remove dead tasks' scratch folders and the cache's stale entries; never raises."""
    try:
        scratch.sweep()
        host_cache.prune()
    except Exception:
        logger.warning("housekeeping sweep failed", exc_info=True)


def on_event(body: Any, message: Any = None) -> None:
    """One lifecycle event: kill a cancelled job's programs here; forget an ended job's cache
    entries (once no task of it runs here)."""
    if not isinstance(body, dict):
        return
    event, job_id = body.get("event"), body.get("job_id")
    if not isinstance(job_id, str):
        return
    try:
        if event == CANCELLED:  # first: its programs die now, on every host
            cancellation.kill_programs(job_id)
        if event in ENDED:
            host_cache.job_ended(job_id)
        elif event == REOPENED:
            host_cache.job_reopened(job_id)
    except Exception:
        logger.warning("host cache: could not handle %s of job %s", event, job_id, exc_info=True)


class Housekeeping(bootsteps.ConsumerStep):
    """Sweep at start and every ``SWEEP_EVERY_S``; follow job ends on a private, auto-deleted
    queue bound to the events exchange."""

    label = "Housekeeping"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._repeat: Any = None
        self._connections = itertools.count()

    def get_consumers(self, channel: Any) -> list[Consumer]:
        # A name of its own per connection: after a failover the old queue's record may outlive
        # its dead node for a moment, and declaring it again would be RESOURCE_LOCKED (fatal to
        # Celery's consumer).
        connection = next(self._connections)
        name = f"encodeq.events.{socket.gethostname()}.{os.getpid()}.host-cache.{connection}"
        keys = (*ENDED, REOPENED)
        queue = Queue(
            name,
            bindings=[binding(EVENTS_EXCHANGE, routing_key=key) for key in keys],
            exclusive=True,
            auto_delete=True,
            durable=False,
        )
        # no_ack: events are transient, there is nothing to redeliver.
        return [
            Consumer(channel, queues=[queue], callbacks=[on_event], accept=["json"], no_ack=True)
        ]

    def start(self, c: Any) -> None:
        sweep()
        if self._repeat is None:
            self._repeat = c.timer.call_repeatedly(SWEEP_EVERY_S, sweep)
        super().start(c)

    def shutdown(self, c: Any) -> None:
        if self._repeat is not None:
            self._repeat.cancel()
            self._repeat = None
        super().shutdown(c)
