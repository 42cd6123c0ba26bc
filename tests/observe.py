"""Watching the live system from a test: lifecycle events, broker queues, worker processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

from support import broker

from core.events import EventSubscription


class Events:
    """A private subscription to ``encodeq.events``, opened before the action it observes."""

    def __enter__(self) -> Events:
        self._conn = broker()
        self._conn.connect()
        self._sub = EventSubscription(self._conn, ("job.*", "rendition.*")).__enter__()
        self.seen: list[dict[str, Any]] = []
        return self

    def __exit__(self, *exc: object) -> None:
        self._sub.__exit__(*exc)
        self._conn.release()

    def collect(self) -> list[dict[str, Any]]:
        """Everything delivered so far (events published before now are already queued for us)."""
        while batch := list(self._sub.events(timeout=0.3)):
            self.seen.extend(batch)
        return self.seen

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict:
        """The first event (seen before or arriving now) that matches, or AssertionError."""
        for event in self.seen:
            if predicate(event):
                self.seen.remove(event)
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self._sub.events(timeout=0.2):
                if predicate(event):
                    return event
                self.seen.append(event)
        raise AssertionError(f"no event {what} within {timeout}s")


def unacked(queue: str) -> int:
    """Messages delivered to consumers and not yet acked, as RabbitMQ reports them."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", _vhost(), "name", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for line in out.stdout.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


def delayed_messages() -> int:
    """Messages held by Celery's native delayed-delivery queues (celery_delayed_0..27)."""
    total = 0
    with broker() as conn:
        ch = conn.channel()
        for level in range(28):
            try:
                _, messages, _ = ch.queue_declare(f"celery_delayed_{level}", passive=True)
            except Exception:
                ch = conn.channel()
                continue
            total += messages
        ch.close()
    return total


def processes_matching(text: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _vhost() -> str:
    from support import settings

    return settings().broker_url.rsplit("/", 1)[1]
