"""The Celery app: JSON only, late acks, prefetch 1, failures dead-lettered, quorum queues.

Importing this module never connects anywhere; the uploader imports it too, to publish tasks.
"""

from __future__ import annotations

from celery import Celery, Task

from config.settings import get_settings
from config.topology import CONTROL_QUEUE_NAME, TASK_ROUTES, WORK_EXCHANGE, work_queues
from worker.failure_handling import DeclareTopology

#: Above the soft limit: the soft one raises inside the task and dead-letters; the hard one only
#: fires if the task ignores it (and then Celery requeues, so the delivery limit ends the loop).
HARD_LIMIT_MARGIN_S = 30


class EncodeqTask(Task):
    Request = "worker.failure_handling:RecordingRequest"


def create_app() -> Celery:
    settings = get_settings()
    app = Celery("encodeq", task_cls=EncodeqTask)
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
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_soft_time_limit=settings.encode_time_limit_s,
        task_time_limit=settings.encode_time_limit_s + HARD_LIMIT_MARGIN_S,
        # Task events for Flower.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_consumer="worker.failure_handling:DeadLetteringConsumer",
        worker_cancel_long_running_tasks_on_connection_loss=False,
        include=["worker.tasks", "worker.chunked_tasks"],
    )
    app.steps["consumer"].add(DeclareTopology)
    return app


app = create_app()
