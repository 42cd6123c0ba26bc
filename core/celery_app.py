"""The Celery app every side of the queue shares: JSON only, late acks, prefetch 1, quorum work
queues and their routes, publisher confirms.

Publishers (the uploader, the console) use ``publisher()``, this factory's app as it is, and send
tasks by name (config/topology.py routes them) and events through its producer pool
(core/events.py); the worker (worker/app.py) builds its app from the same factory and adds what
only a consumer needs. Creating an app never connects anywhere.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import Celery

from config.settings import get_settings
from config.topology import CONTROL_QUEUE_NAME, TASK_ROUTES, WORK_EXCHANGE, work_queues

APP_NAME = "encodeq"


def create_app(**options: Any) -> Celery:
    """A new app configured from the settings; ``options`` go to ``Celery()`` (e.g. task_cls)."""
    settings = get_settings()
    app = Celery(APP_NAME, **options)
    app.conf.update(
        broker_url=settings.broker_url,
        # JSON on the wire, nothing else accepted (a pickle body is dead-lettered, never loaded).
        task_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        # At-least-once: ack after the work, reject (-> dead-letter) on failure, requeue when the
        # worker process dies, one unacked message per process so others can compete for the rest.
        task_acks_late=True,
        task_acks_on_failure=False,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=work_queues(),
        task_default_queue=CONTROL_QUEUE_NAME,
        task_default_exchange=WORK_EXCHANGE.name,
        task_default_exchange_type=WORK_EXCHANGE.type,
        task_default_routing_key="control",
        task_create_missing_queues=False,
        task_routes={name: {"queue": queue} for name, (queue, _key) in TASK_ROUTES.items()},
        # A publish returns once RabbitMQ has the message.
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_soft_time_limit=settings.encode_time_limit_s,
        task_time_limit=settings.hard_time_limit_s,
        # Task events for Flower.
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Remote control (the celery.pidbox broadcast queue) only where Flower needs it: a message
        # published there can shut workers down (ENCODEQ_REMOTE_CONTROL, off by default).
        worker_enable_remote_control=settings.remote_control,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


@cache
def publisher() -> Celery:
    """This process's publishing app (one per process, so one producer pool), made on first use."""
    return create_app(set_as_current=False)
