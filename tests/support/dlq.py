"""Dead letters for the DLQ tests: made on purpose, looked at without consuming them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import amqp

from config.topology import DEAD_LETTER_QUEUE_NAME, TASK_ROUTES, WORK_EXCHANGE, declare_topology
from support.broker import broker, queue_state
from support.waiting import wait_for


def queue_messages(name: str, consume: bool = False) -> list[Any]:
    """Every message of a queue; left in place (held, then returned) unless ``consume``."""
    with broker() as conn:
        ch = conn.channel()
        ch.auto_decode = False  # bodies as the bytes that arrived
        found = []
        while (message := ch.basic_get(name, no_ack=False)) is not None:
            found.append(message)
        if consume and found:
            ch.basic_ack(found[-1].delivery_tag, multiple=True)
        ch.close()
    return found


def dlq_messages() -> list[Any]:
    """Every message in the DLQ, looked at without consuming: held unacked, then the channel is
    closed so they return in order (classic queue: no delivery is counted against them)."""
    with broker() as conn:
        ch = conn.channel()
        found = []
        while (message := ch.basic_get(DEAD_LETTER_QUEUE_NAME, no_ack=False)) is not None:
            found.append(message)
        ch.close()
    return found


def dlq_for(task_ids: set[str] | None = None, job_id: str | None = None) -> list[Any]:
    """DLQ messages of some tasks or of one job (the body's first argument)."""
    found = []
    for message in dlq_messages():
        headers = message.headers or {}
        if task_ids is not None and headers.get("id") in task_ids:
            found.append(message)
        elif job_id is not None:
            try:
                args = json.loads(message.body)[0]
            except (ValueError, TypeError, KeyError, IndexError):
                continue
            if args and args[0] == job_id:
                found.append(message)
    return found


def dlq_of_task(task: str) -> list[Any]:
    return [m for m in dlq_messages() if (m.headers or {}).get("task") == task]


def death_reason(message: Any) -> str:
    return message.headers["x-death"][0]["reason"]


def origin_queue(name: str) -> str:
    """A classic queue dead-lettering into encodeq.dlx: a cheap place for messages to die in."""
    with broker() as conn:
        declare_topology(conn)  # the DLX first: a missing one drops dead letters silently
        ch = conn.channel()
        ch.queue_declare(
            name,
            durable=True,
            auto_delete=False,
            arguments={"x-dead-letter-exchange": "encodeq.dlx"},
        )
        ch.close()
    return name


def celery_message(task: str, job: str | None = None, **headers: Any) -> tuple[bytes, dict]:
    """A Celery protocol 2 message (body, properties) with its own task id."""
    task_id = str(uuid.uuid4())
    job = job or uuid.uuid4().hex
    body = json.dumps([[job], {}, {"callbacks": None, "errbacks": None, "chain": None}]).encode()
    props = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "correlation_id": task_id,
        "application_headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "retries": 0,
            "argsrepr": f"('{job}',)",
            **headers,
        },
    }
    return body, props


def kill_into_dlq(queue: str, messages: list[tuple[bytes, dict]]) -> None:
    """Publish to ``queue`` and reject each without requeue: real dead letters, reason rejected."""
    _publish_and_reject("", queue, queue, messages)


def kill_in_work_queue(routing_key: str, messages: list[tuple[bytes, dict]]) -> str:
    """Publish through the work exchange and reject each from the work queue it reached: dead
    letters whose x-death names that queue, the work exchange and the routing key, as a worker's
    reject leaves them. On a private vhost only (it rejects whatever the queue holds). Returns
    the queue's name."""
    queue = next(q for q, key in TASK_ROUTES.values() if key == routing_key)
    before = queue_state(DEAD_LETTER_QUEUE_NAME)[0]
    with broker() as conn:
        declare_topology(conn)
    rejected = _publish_and_reject(WORK_EXCHANGE.name, routing_key, queue, messages)
    # Quorum queues dead-letter at least once, through their own process: wait for the copies.
    wanted = before + rejected
    wait_for(lambda: queue_state(DEAD_LETTER_QUEUE_NAME)[0] >= wanted, 30, "the dead letters")
    return queue


def _publish_and_reject(
    exchange: str, routing_key: str, queue: str, messages: list[tuple[bytes, dict]]
) -> int:
    """Publish each message, then take as many from ``queue`` and reject them (no requeue)."""
    with broker() as conn:
        ch = conn.connection.channel()
        for body, props in messages:
            ch.basic_publish(amqp.Message(body, **props), exchange, routing_key)
        rejected = 0
        while rejected < len(messages):
            got = ch.basic_get(queue, no_ack=False)
            if got is None:
                continue
            ch.basic_reject(got.delivery_tag, requeue=False)
            rejected += 1
        ch.close()
    return rejected
