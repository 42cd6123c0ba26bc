"""What the broker lessons share: JSON messages, a consumer on a thread, a tally to wait on.

py-amqp directly (through kombu's connection): the lessons are about what AMQP does (prefetch,
acks, confirms, reply-to, stream offsets), so they show those calls rather than hide them. A
connection is not thread-safe, so every consumer thread opens its own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import amqp
from kombu import Connection

#: How long a lesson waits for something the broker should do in well under a second.
PATIENCE_S = 30.0


def message(body: dict[str, Any], **properties: Any) -> amqp.Message:
    """A JSON message (the project sends nothing else)."""
    return amqp.Message(json.dumps(body), content_type="application/json", **properties)


def body_of(delivery: amqp.Message) -> dict[str, Any]:
    return json.loads(delivery.body)


def connect(url: str, confirms: bool = False) -> Connection:
    """A connected kombu connection; ``confirms``: every publish on its channels waits for the
    broker's ack and raises ``MessageNacked`` on a nack."""
    connection = Connection(url, transport_options={"confirm_publish": confirms})
    connection.ensure_connection(max_retries=3)
    return connection


class Tally:
    """Things received by several threads, in the order they were handled; wait for a count."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = threading.Condition()

    def add(self, item: Any) -> None:
        with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    def wait_for(self, done: Callable[[list[Any]], bool], timeout: float = PATIENCE_S) -> bool:
        """True once ``done(items)`` holds; False when ``timeout`` passes first."""
        with self._changed:
            return self._changed.wait_for(lambda: done(self.items), timeout=timeout)

    def wait_count(self, count: int, timeout: float = PATIENCE_S) -> bool:
        return self.wait_for(lambda items: len(items) >= count, timeout)


#: A consumer's work: (the decoded body, the delivery) -> None; the thread acks afterwards.
Handler = Callable[[dict[str, Any], amqp.Message], None]


class ConsumerThread(threading.Thread):
    """One consumer with a connection of its own: prefetch, manual acks after the handler (unless
    ``no_ack``), until ``stop``. ``ready`` is set once the broker confirmed the consume."""

    def __init__(
        self,
        url: str,
        queue: str,
        handler: Handler,
        prefetch: int = 1,
        arguments: dict[str, Any] | None = None,
        name: str = "consumer",
    ) -> None:
        super().__init__(name=f"encodeq-learn-{name}", daemon=True)
        self.url, self.queue, self.handler = url, queue, handler
        self.prefetch, self.arguments = prefetch, arguments or {}
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.url) as connection:
                channel = connection.channel()
                channel.basic_qos(0, self.prefetch, False)
                channel.basic_consume(self.queue, callback=self._deliver, arguments=self.arguments)
                self.ready.set()
                while not self._stopping.is_set():
                    try:
                        connection.drain_events(timeout=0.05)
                    except TimeoutError:
                        continue
        except BaseException as exc:  # handed to whoever stops the thread
            self.error = exc
            self.ready.set()

    def _deliver(self, delivery: amqp.Message) -> None:
        self.handler(body_of(delivery), delivery)
        delivery.channel.basic_ack(delivery.delivery_tag)

    def stop(self) -> None:
        """Stop consuming and close the connection (what it held unacked goes back to the queue);
        raises what went wrong on the thread."""
        self._stopping.set()
        self.join(timeout=PATIENCE_S)
        if self.error is not None:
            raise self.error


def start_all(consumers: list[ConsumerThread]) -> list[ConsumerThread]:
    """Start them and return once each one's consume is registered (or it failed)."""
    for consumer in consumers:
        consumer.start()
    for consumer in consumers:
        consumer.ready.wait(PATIENCE_S)
        if consumer.error is not None:
            stop_all(consumers)
    return consumers


def stop_all(consumers: list[ConsumerThread]) -> None:
    errors = []
    for consumer in consumers:
        try:
            consumer.stop()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def work(milliseconds: float) -> None:
    """Stand-in for a task's work (an encode, a thumbnail): it takes time, nothing else."""
    time.sleep(milliseconds / 1000)
