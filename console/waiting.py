"""Waiting on a condition with a deadline, for the console's own processes (a scratch cluster's
nodes, a lesson's workers): nothing sleeps a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """What was awaited did not happen in time (the message says what)."""


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    """The first truthy value of ``condition()``, polled every ``every`` s; ``WaitTimeout``
    after ``timeout`` s, naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
