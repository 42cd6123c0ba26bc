"""Lifecycle events as a test sees them: a private subscription opened before the action."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from core.events import EventSubscription
from support.broker import broker


class Events:
    """A private subscription to ``encodeq.events``, opened before the action it observes."""

    def __init__(self, keys: tuple[str, ...] = ("job.*", "rendition.*")) -> None:
        self.keys = keys

    def __enter__(self) -> Events:
        self._conn = broker()
        self._conn.connect()
        self._sub = EventSubscription(self._conn, self.keys).__enter__()
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
            batch = list(self._sub.events(timeout=0.2))  # whole: none after a match is dropped
            for i, event in enumerate(batch):
                if predicate(event):
                    self.seen.extend(batch[i + 1 :])
                    return event
                self.seen.append(event)
        raise AssertionError(f"no event {what} within {timeout}s")
