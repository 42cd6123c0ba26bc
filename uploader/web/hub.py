"""One events subscription per server, fanned out to every browser that listens.

A thread owns the broker connection (kombu is blocking): through the live feed
(``core/live_feed.py``, the same one ``encodeq watch`` and ``upload --wait`` follow jobs with) it
keeps the shared ``Monitor`` (workers, live progress, queue depths over time) current, and hands
each event and queue-depth sample to every connected SSE client's asyncio queue. A slow client
loses events rather than slowing the others down: events are best effort, the manifests behind
``GET /api/jobs`` are the truth. A lost broker connection is retried; clients stay connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from kombu import Connection

from config.retry_policy import broker_retry
from core.live_feed import LiveFeed
from core.manifest import JobStore
from core.monitor import Monitor

logger = logging.getLogger(__name__)

#: Queue depths are sampled (and sent to clients) this often.
SAMPLE_EVERY_S = 1.0
#: Manifests of jobs in flight are re-read this often, to correct what lost events left wrong.
POLL_EVERY_S = 3.0
#: Events a client may have waiting before it starts losing them.
CLIENT_BACKLOG = 1000
RECONNECT_S = 2.0


class _Client:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(CLIENT_BACKLOG)
        self.dropped = 0

    def put(self, event: dict[str, Any] | None) -> None:
        """Runs on the client's event loop."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1


class EventHub:
    """Subscription thread + monitor + SSE fan-out."""

    def __init__(self, broker_url: str, jobs: JobStore) -> None:
        self.broker_url = broker_url
        self.jobs = jobs
        self.monitor = Monitor()
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._clients: set[_Client] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="encodeq-events", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self, wait_s: float = 10.0) -> bool:
        """Start the thread; True once subscribed (events from then on reach clients)."""
        self._thread.start()
        return self.connected.wait(wait_s)

    def stop(self) -> None:
        self._stop.set()
        self.close_clients()
        self._thread.join(timeout=5)

    def close_clients(self) -> None:
        """End every SSE stream (a None tells the stream to finish)."""
        self._broadcast(None)

    # --- clients --------------------------------------------------------------------------------
    def subscribe(self) -> _Client:
        client = _Client(asyncio.get_running_loop())
        with self._lock:
            self._clients.add(client)
        return client

    def unsubscribe(self, client: _Client) -> None:
        with self._lock:
            self._clients.discard(client)

    def _broadcast(self, event: dict[str, Any] | None) -> None:
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the server is stopping
                client.loop.call_soon_threadsafe(client.put, event)

    def inject(self, event: dict[str, Any]) -> None:
        """An event this server's subscription cannot see (a lesson's task run, from its scratch
        vhost: console/learn/event_relay.py), kept and sent as if it had brought it."""
        self.monitor.apply(event)
        self._broadcast(event)

    # --- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        loaded = False
        while not self._stop.is_set():
            try:
                with Connection(self.broker_url, heartbeat=0) as connection:
                    connection.ensure_connection(**broker_retry(max_retries=1))
                    with LiveFeed(
                        connection,
                        self.jobs,
                        self.monitor,
                        poll_every_s=POLL_EVERY_S,
                        sample_every_s=SAMPLE_EVERY_S,
                        on_poll_error=_poll_failed,
                    ) as feed:
                        self.connected.set()
                        if not loaded:
                            feed.load()
                            loaded = True
                        self._forward(feed)
            except Exception:
                logger.warning("events: broker connection lost; retrying", exc_info=True)
            self.connected.clear()
            self._stop.wait(RECONNECT_S)

    def _forward(self, feed: LiveFeed) -> None:
        """Every event, then every queue-depth sample, to every client, as the feed brings them."""
        while not self._stop.is_set():
            tick = feed.tick(timeout=0.25)
            for event in tick.events:
                self._broadcast(event)
            if tick.queues is not None:
                self._broadcast({"event": "queues", **tick.queues})


def _poll_failed(exc: Exception) -> None:
    """Storage down: the feed's next poll tries again."""
    logger.warning("events: could not re-read manifests", exc_info=exc)
