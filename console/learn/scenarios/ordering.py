"""Lesson 'ordering': competing consumers break order; a partition per key with one consumer keeps
each key's order (a consistent-hash exchange, the way Kafka keys keep order within a partition).

Every job has a run of events numbered 0, 1, 2...; each takes a random time to handle (the time is
in the message, so both halves handle the same work). Handled by competing consumers on one queue,
a job's event 3 can finish before its event 2; routed by job id through an ``x-consistent-hash``
exchange to partition queues with one consumer each, a job's events always meet the same consumer,
one at a time, in the order they were published. The verdict counts, per job, events handled after
a later one of the same job: what the consumers actually received, in the order they handled it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

import amqp
from amqp.exceptions import AMQPError

from console.learn.lesson import LessonContext, Outcome, Scenario
from console.learn.scenarios.kit import (
    ConsumerThread,
    Tally,
    connect,
    message,
    start_all,
    stop_all,
    work,
)
from console.rabbitmq_cli import LOOPBACK, local_amqp_ports

PLUGIN = "rabbitmq_consistent_hash_exchange"
SHARED_QUEUE = "ordering.shared"
HASH_EXCHANGE = "ordering.by-job"
JOBS, EVENTS_PER_JOB, CONSUMERS, PARTITIONS = 4, 15, 3, 3


class PluginMissing(RuntimeError):
    """The broker has no consistent-hash exchange and this lesson may not enable it there."""


def _plugin_refusal(url: str) -> str | None:
    """Why the plugin cannot be enabled from here (None: the local node serves this URL)."""
    parts = urlsplit(url.split(";")[0].strip())  # a failover list: its first broker
    if (parts.hostname or "127.0.0.1") not in LOOPBACK:
        return f"the broker runs on {parts.hostname}, not on this machine"
    if shutil.which("rabbitmq-plugins") is None or shutil.which("rabbitmq-diagnostics") is None:
        return "rabbitmq-plugins is not installed here"
    if (parts.port or 5672) not in local_amqp_ports():
        return f"the local RabbitMQ node does not serve port {parts.port or 5672}"
    return None


def _declare_hash_exchange(url: str) -> bool:
    """Declare the partitioning exchange; False when the broker does not know the type."""
    with connect(url) as connection:
        try:
            connection.channel().exchange_declare(
                HASH_EXCHANGE, "x-consistent-hash", durable=False, auto_delete=False
            )
        except AMQPError as exc:  # 503 "unknown exchange type": the broker closed the connection
            if "exchange type" in str(exc):
                return False
            raise
    return True


def ensure_hash_exchange(context: LessonContext) -> None:
    """The exchange, enabling the plugin (harmless, online) on this machine's node if needed."""
    if _declare_hash_exchange(context.broker_url):
        return
    refusal = _plugin_refusal(context.broker_url)
    if refusal is not None:
        raise PluginMissing(
            f"this lesson needs the {PLUGIN} plugin, which the broker has not enabled ({refusal}):"
            f" run `rabbitmq-plugins enable {PLUGIN}` on the broker's node"
        )
    context.narrator.step(f"The broker lacks {PLUGIN}: enabling it (it ships with RabbitMQ).")
    enabling = subprocess.run(
        ["rabbitmq-plugins", "enable", PLUGIN], capture_output=True, text=True, timeout=120
    )
    if enabling.returncode != 0:
        raise PluginMissing(
            f"this lesson needs the {PLUGIN} plugin and `rabbitmq-plugins enable {PLUGIN}` failed"
            f" here: {(enabling.stderr or enabling.stdout).strip()[-300:]}"
        )
    if not _declare_hash_exchange(context.broker_url):
        raise PluginMissing(f"{PLUGIN} is enabled but the broker still refuses the exchange type")


def _events(context: LessonContext) -> list[dict[str, Any]]:
    """Each job's events, jobs interleaved as they would be in a busy system; the work times are
    heavy-tailed (most events quick, some slow), like renditions of different sizes."""
    rng = context.rng
    jobs = [f"job-{rng.randrange(16**6):06x}" for _ in range(JOBS)]
    return [
        {"job_id": job, "seq": seq, "work_ms": rng.uniform(30, 50) if rng.random() < 0.3 else 2}
        for seq in range(EVENTS_PER_JOB)
        for job in jobs
    ]


def late_events(handled: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """Events handled after a later event of the same job, each with that later event's number."""
    latest: dict[str, int] = {}
    late = []
    for event in handled:
        seen = latest.get(event["job_id"], -1)
        if event["seq"] < seen:
            late.append((event, seen))
        latest[event["job_id"]] = max(event["seq"], seen)
    return late


def out_of_order(handled: list[dict[str, Any]]) -> int:
    return len(late_events(handled))


def _consumer(context: LessonContext, queue: str, tally: Tally, name: str) -> ConsumerThread:
    def handle(body: dict[str, Any], delivery: amqp.Message) -> None:
        work(body["work_ms"])
        tally.add({**body, "queue": queue, "consumer": name})

    return ConsumerThread(context.broker_url, queue, handle, prefetch=1, name=name)


def _run_half(
    context: LessonContext,
    events: list[dict[str, Any]],
    consumers: list[ConsumerThread],
    tally: Tally,
    route: Any,
) -> list[dict[str, Any]]:
    """Publish every event (``route(event)`` -> exchange, routing key), wait until all were
    handled (or patience ran out), stop the consumers."""
    start_all(consumers)
    try:
        with connect(context.broker_url, confirms=True) as connection:
            channel = connection.channel()
            for event in events:
                exchange, key = route(event)
                channel.basic_publish(message(event), exchange=exchange, routing_key=key)
        tally.wait_count(len(events))
    finally:
        stop_all(consumers)
    return list(tally.items)


def _competing(context: LessonContext, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with connect(context.broker_url) as connection:
        connection.channel().queue_declare(SHARED_QUEUE, durable=False, auto_delete=False)
    tally = Tally()
    consumers = [_consumer(context, SHARED_QUEUE, tally, f"c{i + 1}") for i in range(CONSUMERS)]
    context.narrator.step(
        f"{CONSUMERS} competing consumers take {len(events)} events of {JOBS} jobs from one queue"
        " (prefetch 1), each event taking its own time."
    )
    return _run_half(context, events, consumers, tally, lambda e: ("", SHARED_QUEUE))


def _partitioned(context: LessonContext, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ensure_hash_exchange(context)
    per_partition = int(context.knob("consumers_per_partition", 1))
    hash_on = str(context.knob("hash_on", "job_id"))
    queues = [f"ordering.partition-{p}" for p in range(PARTITIONS)]
    with connect(context.broker_url) as connection:
        channel = connection.channel()
        for queue in queues:
            channel.queue_declare(queue, durable=False, auto_delete=False)
            channel.queue_bind(queue, HASH_EXCHANGE, routing_key="1")  # the weight: equal shares
    tally = Tally()
    consumers = [
        _consumer(context, queue, tally, f"p{p}.{i + 1}")
        for p, queue in enumerate(queues)
        for i in range(per_partition)
    ]
    context.narrator.step(
        f"Now through {HASH_EXCHANGE} (x-consistent-hash on the {hash_on}) to {PARTITIONS}"
        f" partition queues, {per_partition} consumer(s) each."
    )

    def route(event: dict[str, Any]) -> tuple[str, str]:
        key = event["job_id"] if hash_on == "job_id" else f"{event['job_id']}.{event['seq']}"
        return HASH_EXCHANGE, key

    return _run_half(context, events, consumers, tally, route)


def _split_jobs(handled: list[dict[str, Any]]) -> int:
    """Jobs whose events went to more than one partition queue."""
    queues: dict[str, set[str]] = defaultdict(set)
    for event in handled:
        queues[event["job_id"]].add(event["queue"])
    return sum(1 for seen in queues.values() if len(seen) > 1)


def run(context: LessonContext) -> Outcome:
    events = _events(context)
    competing = _competing(context, events)
    for event, seen in late_events(competing)[:1]:
        context.narrator.step(
            f"{event['job_id']}: event {event['seq']} was handled by {event['consumer']} after"
            f" event {seen} of the same job had already been handled."
        )
    partitioned = _partitioned(context, events)
    counters: dict[str, Any] = {
        "events": len(events),
        "competing_handled": len(competing),
        "competing_out_of_order": out_of_order(competing),
        "partitioned_handled": len(partitioned),
        "partitioned_out_of_order": out_of_order(partitioned),
        "jobs_split_across_partitions": _split_jobs(partitioned),
        "partitions_used": len({e["queue"] for e in partitioned}),
    }
    context.narrator.table(
        "events handled after a later event of the same job",
        {
            "competing": {"handled": len(competing), "out of order": out_of_order(competing)},
            "partitioned": {"handled": len(partitioned), "out of order": out_of_order(partitioned)},
        },
    )
    passed = (
        counters["competing_handled"] == counters["partitioned_handled"] == len(events)
        and counters["competing_out_of_order"] > 0
        and counters["partitioned_out_of_order"] == 0
    )
    return Outcome(passed=passed, counters=counters, lesson=LESSON, see=SEE)


LESSON = (
    "Competing consumers give throughput, not order: two events of one job can be in flight at"
    " once and the later one can finish first. Order is kept per key, not globally: hash the key"
    " to a partition and give each partition one consumer, as Kafka does with its keys."
)
SEE = (
    "core/manifest.py: the real workers compete, so nothing there relies on order (one writer"
    " per record; a late duplicate never downgrades a finished rendition)"
)

SCENARIO = Scenario(
    name="ordering",
    title="Ordering: per key, by partition",
    summary="competing consumers reorder a job's events; a consistent-hash partition per job keeps"
    " them in order",
    run=run,
    knobs={"consumers_per_partition": 1, "hash_on": "job_id"},
)
