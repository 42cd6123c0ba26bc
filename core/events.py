"""Job, rendition and chunk lifecycle events on the ``encodeq.events`` topic exchange (pub-sub).

Routing keys: ``job.<what>`` (queued, probing, encoding, completed, failed, reopened, requeued,
mode_changed), ``rendition.<what>`` (started, progress, completed), in chunked mode
``chunk.<what>`` (started, completed, straggler, discarded), and ``task.started`` /
``task.finished`` for every task run (worker/task_events.py: the dashboard's timeline). Every
subscriber binds its own auto-deleted queue, so the CLI, a dashboard and any notifier each see
every event. Events are transient: they show what is happening; the manifest in storage is the
truth.

Publishers (the worker's tasks and failure handler, the uploader) ``emit`` through their Celery
app's producer pool, whose connections fail over like every kombu connection; subscribers open an
``EventSubscription``, which subscribes again on another node when its node goes away.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from celery import Celery
from kombu import Connection, Consumer, Producer, Queue
from kombu.exceptions import OperationalError

from config.retry_policy import broker_retry
from config.settings import get_settings
from config.topology import EVENTS_EXCHANGE
from core.job_model import now_iso

logger = logging.getLogger(__name__)

#: Attempts after the first to publish an event: an event is worth a moment, never a stall.
PUBLISH_RETRIES = 2


def publish_event(producer: Producer, routing_key: str, **fields: Any) -> None:
    """Publish one event; never lets a broker hiccup fail the work that emits it."""
    body = {"event": routing_key, "time": now_iso(), **fields}
    with contextlib.suppress(OperationalError, OSError):
        producer.publish(
            body,
            exchange=EVENTS_EXCHANGE,
            routing_key=routing_key,
            serializer="json",
            delivery_mode=1,
            declare=[EVENTS_EXCHANGE],
            retry=True,
            retry_policy=broker_retry(max_retries=PUBLISH_RETRIES),
        )


def emit(app: Celery, routing_key: str, **fields: Any) -> None:
    """Publish one event through ``app``'s producer pool (a connection it already holds)."""
    with app.producer_or_acquire() as producer:
        publish_event(producer, routing_key, **fields)


class EventSubscription:
    """A private, auto-deleted queue bound to the events exchange.

    The queue lives on the node the connection reached and dies with it (or with the
    connection), so a lost connection is not the end: ``events`` connects again, to the next node
    of a failover list (``ENCODEQ_BROKER_URL`` with ``;``), and subscribes anew with a queue of a
    new name. What was published in between is lost (events are best effort); ``resubscribed``
    counts the gaps, so a subscriber knows when to re-read the truth (the manifests).
    """

    def __init__(self, connection: Connection, binding_keys: tuple[str, ...] = ("#",)) -> None:
        self.connection = connection
        self._name = f"encodeq.events.{socket.gethostname()}.{os.getpid()}.{id(self):x}"
        self._keys = binding_keys
        self.resubscribed = 0
        self.queue = self._new_queue()
        self._pending: list[dict[str, Any]] = []
        self._consumer: Consumer | None = None

    def _new_queue(self) -> Queue:
        suffix = f".{self.resubscribed}" if self.resubscribed else ""
        return Queue(
            self._name + suffix,
            exchange=EVENTS_EXCHANGE,
            routing_key=self._keys[0],
            exclusive=True,
            auto_delete=True,
            durable=False,
        )

    def __enter__(self) -> EventSubscription:
        channel = self.connection.channel()
        EVENTS_EXCHANGE.bind(channel).declare()
        bound = self.queue.bind(channel)
        bound.declare()
        for key in self._keys[1:]:
            bound.bind_to(EVENTS_EXCHANGE, routing_key=key)
        self._consumer = Consumer(
            channel, queues=[bound], callbacks=[self._on_message], accept=["json"], no_ack=True
        )
        self._consumer.consume()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._consumer is not None:
            try:
                self._consumer.cancel()
                self._consumer.channel.close()
            except Exception:  # the connection may already be gone; the queue auto-deletes
                pass

    def resubscribe(self) -> None:
        """Connect again (kombu moves on to the next node of a failover list when this one does
        not answer) and subscribe with a new private queue; raises once ``broker_wait_s`` passed
        without a broker."""
        self._consumer = None  # its channel died with the connection
        self.connection.collect()  # drop the dead connection without talking to it
        self.connection.ensure_connection(**broker_retry(timeout=get_settings().broker_wait_s))
        self.resubscribed += 1
        self.queue = self._new_queue()
        self.__enter__()

    @property
    def lost_connection_errors(self) -> tuple[type[BaseException], ...]:
        """What a dead broker connection raises (a node killed or restarted, a network cut)."""
        return (OperationalError, *self.connection.recoverable_connection_errors)

    def _on_message(self, body: dict[str, Any], message: Any) -> None:
        self._pending.append(body)

    def events(self, timeout: float) -> Iterator[dict[str, Any]]:
        """The events that arrive within ``timeout`` seconds (possibly none); a lost connection
        is subscribed again before this returns."""
        try:
            self.connection.drain_events(timeout=timeout)
            # Take whatever else is already buffered without waiting again.
            while True:
                self.connection.drain_events(timeout=0.01)
        except TimeoutError:  # before the errors below: socket.timeout is an OSError
            pass
        except self.lost_connection_errors as exc:
            logger.warning("events: broker connection lost (%r); subscribing again", exc)
            self.resubscribe()
        pending, self._pending = self._pending, []
        yield from pending
