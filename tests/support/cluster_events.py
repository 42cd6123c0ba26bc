"""Lifecycle events collected in the background while a test breaks the cluster.

A thread of its own holds the subscription (kombu connections are not for sharing between
threads), so the test can kill nodes and wait on conditions while events keep arriving; when the
node under the subscription dies, ``EventSubscription`` follows on another node (core/events.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kombu import Connection

from core.events import EventSubscription
from support.waiting import wait_for

LIVE_KEYS = ("job.*", "rendition.*", "task.*")


class EventLog:
    """``with EventLog(url) as log:`` every event from then on, in arrival order."""

    def __init__(self, url: str, keys: tuple[str, ...] = LIVE_KEYS) -> None:
        self.url, self.keys = url, keys
        self.seen: list[dict[str, Any]] = []
        #: How often the subscription had to follow onto another node.
        self.resubscribed = 0
        self.error: BaseException | None = None
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-log", daemon=True)

    def __enter__(self) -> EventLog:
        self._thread.start()
        if not self._ready.wait(60) or self.error is not None:
            raise AssertionError(f"could not subscribe at {self.url}: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            with (
                Connection(self.url, heartbeat=0) as connection,
                EventSubscription(connection, self.keys) as subscription,
            ):
                self._ready.set()
                while not self._stop.is_set():
                    self.seen.extend(subscription.events(timeout=0.2))
                    self.resubscribed = subscription.resubscribed
        except BaseException as exc:  # reported by the next wait, not lost with the thread
            self.error = exc
            self._ready.set()

    def _alive(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the event subscription died: {self.error!r}")

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in list(self.seen) if e.get("event") == event]

    def after(self, moment: datetime, event: str) -> list[dict[str, Any]]:
        """Events of a kind stamped (by their publisher, on this machine) after ``moment``."""
        return [e for e in self.of(event) if datetime.fromisoformat(e["time"]) > moment]

    def started_after(self, moment: datetime) -> dict[str, Any] | None:
        """The first task run that started after ``moment`` (the worker's clock: this machine)."""
        return next(iter(self.after(moment, "task.started")), None)

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict:
        """The first event so far that matches, waiting up to ``timeout`` s for one."""

        def found() -> dict[str, Any] | None:
            self._alive()
            return next((e for e in list(self.seen) if predicate(e)), None)

        return wait_for(found, timeout, what, every=0.05)

    def wait_count(self, event: str, count: int, timeout: float) -> None:
        def enough() -> bool:
            self._alive()
            return len(self.of(event)) >= count

        wait_for(enough, timeout, f"{count} {event} events", every=0.05)
