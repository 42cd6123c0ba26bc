"""A lesson's task runs on the dashboard's timeline: its scratch vhost's ``task.*`` events, relayed.

A lesson's workers run in a vhost of their own (console/learn/scratch.py), so the events exchange
the dashboard subscribes to never sees them. While a lesson runs from the page, a thread
subscribes to the scratch vhost's events exchange with the same ``EventSubscription`` every
live view uses and hands each ``task.started`` / ``task.finished`` to the dashboard, tagged with
the lesson: the page draws the lesson's workers as lanes beside the fleet's, so a redelivery, a
retry or a dead letter the lesson causes is a bar a learner sees. Only task runs are relayed: the
lesson's jobs live in scratch buckets the page cannot read. Best effort, like every event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from kombu import Connection

from config.retry_policy import broker_retry
from core.events import EventSubscription

log = logging.getLogger(__name__)

#: The events relayed: every task run's start and end (worker/task_events.py).
TASK_EVENTS = ("task.#",)
#: How long the block waits for the subscription before the lesson starts anyway.
SUBSCRIBE_WAIT_S = 10.0

Sink = Callable[[dict[str, Any]], None]


@contextmanager
def relayed_task_events(broker_url: str, sink: Sink, tags: Mapping[str, Any]) -> Iterator[None]:
    """Relay the ``task.*`` events of ``broker_url``'s vhost to ``sink``, each with ``tags``,
    while the block runs; subscribed before the block begins (a lesson's first task is not
    missed), unsubscribed when it ends, before the scratch vhost goes."""
    stop, subscribed = threading.Event(), threading.Event()

    def pump() -> None:
        try:
            with Connection(broker_url, heartbeat=0) as connection:
                connection.ensure_connection(**broker_retry(max_retries=1))
                with EventSubscription(connection, TASK_EVENTS) as subscription:
                    subscribed.set()
                    while not stop.is_set():
                        for event in subscription.events(timeout=0.25):
                            sink({**event, **tags})
        except Exception:  # the lesson runs on; the page just draws none of its bars
            log.warning("lesson events: relay from %s ended", broker_url, exc_info=True)
        finally:
            subscribed.set()

    thread = threading.Thread(target=pump, name="encodeq-lesson-events", daemon=True)
    thread.start()
    subscribed.wait(SUBSCRIBE_WAIT_S)
    try:
        yield
    finally:
        stop.set()
        thread.join(SUBSCRIBE_WAIT_S)
