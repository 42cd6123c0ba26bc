"""The Celery app: JSON only, late acks, prefetch 1, failures dead-lettered, quorum queues.

Importing this module never connects anywhere; the uploader imports it too, to publish tasks.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from config.settings import get_settings
from config.topology import CONTROL_QUEUE_NAME, TASK_ROUTES, WORK_EXCHANGE, work_queues
from core.errors import PermanentError
from worker.failure_handling import DeclareTopology


class EncodeqTask(Task):
    Request = "worker.failure_handling:RecordingRequest"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.name in get_settings().fail_tasks.split(","):
            raise PermanentError("injected_fault", f"{self.name} fails here on purpose (drill)")
        return super().__call__(*args, **kwargs)


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
        task_time_limit=settings.hard_time_limit_s,
        # Task events for Flower.
        worker_send_task_events=True,
        # Remote control (the celery.pidbox broadcast queue) only where Flower needs it: a message
        # published there can shut workers down (ENCODEQ_REMOTE_CONTROL, off by default).
        worker_enable_remote_control=settings.remote_control,
        task_send_sent_event=True,
        worker_consumer="worker.failure_handling:DeadLetteringConsumer",
        worker_cancel_long_running_tasks_on_connection_loss=False,
        include=["worker.tasks", "worker.chunked_tasks"],
    )
    app.steps["consumer"].add(DeclareTopology)
    # Dead tasks' scratch folders swept, ended jobs' cache entries dropped on every host.
    app.steps["consumer"].add("worker.housekeeping:Housekeeping")
    # By name: the janitor imports the tasks, which import this module.
    app.steps["worker"].add("worker.janitor:Janitor")
    return app


app = create_app()
