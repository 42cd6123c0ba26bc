"""A consumer bootstep: declare the RabbitMQ topology whenever the worker's consumer connects."""

from __future__ import annotations

from celery import bootsteps
from celery.worker.consumer import Consumer
from celery.worker.consumer.connection import Connection

from config.topology import declare_topology


class DeclareTopology(bootsteps.StartStopStep):
    """Declare exchanges, the DLQ and the work queues on every (re)connection of the consumer, so
    a worker started against a fresh broker never consumes from a queue without its dead-letter
    route."""

    requires = (Connection,)

    def start(self, c: Consumer) -> None:
        declare_topology(c.connection)
