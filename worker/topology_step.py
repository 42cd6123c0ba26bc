"""Consumer bootsteps: the RabbitMQ topology, and Celery's native delayed delivery, declared on the
connection the worker's consumer has just made, whenever it (re)connects."""

from __future__ import annotations

import logging

from celery import bootsteps
from celery.worker.consumer import Consumer
from celery.worker.consumer.connection import Connection
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu.transport.native_delayed_delivery import (
    declare_native_delayed_delivery_exchanges_and_queues,
)

from config.topology import declare_topology
from worker.failure_handling import DeadLetteringConsumer

logger = logging.getLogger(__name__)

#: Celery's own delayed-delivery step, which ``FailoverConsumer`` runs ``DeclareDelayedDelivery``
#: in place of.
CELERY_DELAYED_DELIVERY = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class DeclareTopology(bootsteps.StartStopStep):
    """Declare exchanges, the DLQ and the work queues on every (re)connection of the consumer, so
    a worker started against a fresh broker never consumes from a queue without its dead-letter
    route."""

    requires = (Connection,)

    def start(self, c: Consumer) -> None:
        declare_topology(c.connection)


class DeclareDelayedDelivery(DelayedDelivery):
    """Celery's native delayed delivery (retry countdowns held by the broker), declared through
    the consumer's own connection.

    Celery's step opens a connection to each URL of a failover list in turn, and retries one
    whose node is down for about 10 s (celery/worker/consumer/delayed_delivery.py): it runs on
    every reconnection, so a worker failing over from a dead node waited that long before it
    consumed again. The URLs of ``ENCODEQ_BROKER_URL`` are nodes of one cluster, where one
    declaration reaches all; the consumer's connection is to a node that answers, as is
    ``DeclareTopology``'s.
    """

    def start(self, c: Consumer) -> None:
        queue_type = c.app.conf.broker_native_delayed_delivery_queue_type
        try:
            declare_native_delayed_delivery_exchanges_and_queues(c.connection, queue_type)
            self._bind_queues(c.app, c.connection)
        except c.connection_errors:
            raise  # the consumer reconnects (to the next node) and runs its steps again
        except Exception as exc:  # as Celery's step: retries then wait in worker memory
            logger.warning("native delayed delivery not set up: %r", exc)


class FailoverConsumer(DeadLetteringConsumer):
    """The worker's consumer, with delayed delivery declared where it is connected."""

    class Blueprint(DeadLetteringConsumer.Blueprint):
        default_steps = [
            f"{__name__}:DeclareDelayedDelivery" if step == CELERY_DELAYED_DELIVERY else step
            for step in DeadLetteringConsumer.Blueprint.default_steps
        ]
