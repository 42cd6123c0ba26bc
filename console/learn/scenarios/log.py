"""Lesson 'log': the log instead of the queue. Job events kept in a RabbitMQ stream and replayed.

A stream queue (``x-queue-type: stream``, RabbitMQ 3.9+, plain AMQP: no stream plugin needed) is
bound to ``encodeq.events`` beside a classic work queue, and a few jobs' events are published the
way the workers publish them (core/events.py). The work queue is consumed once and is then empty:
a second consumer gets nothing. The stream is a log: a subscriber that arrives late attaches at
``x-stream-offset: first`` and replays the whole history, rebuilding every job's state from its
events (event sourcing); another subscriber builds a read model that answers a query (CQRS). The
verdict compares what the subscribers received and rebuilt with what was published.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter as Multiset
from typing import Any

import amqp
from kombu import Producer

from config.topology import EVENTS_EXCHANGE
from console.learn.lesson import LessonContext, Outcome, Scenario
from console.learn.scenarios.job_story import JobScript, apply, interleave, script_jobs
from console.learn.scenarios.kit import PATIENCE_S, body_of, connect, message
from core.events import publish_event

STREAM, WORK_QUEUE = "log.events", "log.work-queue"
BINDINGS = ("job.*", "rendition.*")
#: A stream keeps its history up to a retention limit, not until someone consumes it.
RETENTION_BYTES = 20 * 1024 * 1024


def _declare(channel: amqp.Channel) -> None:
    channel.exchange_declare(EVENTS_EXCHANGE.name, "topic", durable=True, auto_delete=False)
    stream_args = {"x-queue-type": "stream", "x-max-length-bytes": RETENTION_BYTES}
    channel.queue_declare(STREAM, durable=True, auto_delete=False, arguments=stream_args)
    channel.queue_declare(WORK_QUEUE, durable=True, auto_delete=False)
    for queue in (STREAM, WORK_QUEUE):
        for key in BINDINGS:
            channel.queue_bind(queue, EVENTS_EXCHANGE.name, routing_key=key)


def _publish(url: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    """Through core/events.py's own ``publish_event``, on a connection with publisher confirms
    (an event is transient by design; here the lesson needs every one to arrive)."""
    with connect(url, confirms=True) as connection:
        producer = Producer(connection.channel())
        for routing_key, fields in events:
            publish_event(producer, routing_key, **fields)


def _drain_work_queue(channel: amqp.Channel) -> tuple[int, int, int]:
    """(taken by the first consumer, left in the queue, taken by a second consumer)."""
    first = 0
    while (delivery := channel.basic_get(WORK_QUEUE)) is not None:
        channel.basic_ack(delivery.delivery_tag)
        first += 1
    _, left, _ = channel.queue_declare(WORK_QUEUE, passive=True)
    second = 0
    while (delivery := channel.basic_get(WORK_QUEUE)) is not None:
        channel.basic_ack(delivery.delivery_tag)
        second += 1
    return first, left, second


def replay(url: str, offset: Any) -> list[dict[str, Any]]:
    """Attach to the stream at ``offset`` and read until a marker this subscriber publishes once
    attached: everything before it is what the subscriber can see of the history."""
    marker = uuid.uuid4().hex
    received: list[amqp.Message] = []
    with connect(url) as connection:
        channel = connection.channel()
        channel.basic_qos(0, 100, False)  # a stream consumer must have a prefetch (and ack)
        channel.basic_consume(
            STREAM, callback=received.append, arguments={"x-stream-offset": offset}
        )
        connection.channel().basic_publish(message({"marker": marker}), "", routing_key=STREAM)
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            while received:
                delivery = received.pop(0)
                channel.basic_ack(delivery.delivery_tag)
                body = body_of(delivery)
                if body.get("marker") == marker:
                    return events
                if "marker" not in body:
                    offset_seen = (delivery.headers or {}).get("x-stream-offset")
                    events.append({**body, "_offset": offset_seen})
            try:
                connection.drain_events(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
    raise TimeoutError(f"the stream did not deliver this subscriber's marker in {PATIENCE_S} s")


def read_model(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The query side (CQRS): a projection shaped for one question, "how many renditions did each
    completed job produce, and why did the failed ones fail?", not for rebuilding jobs."""
    renditions: Multiset[str] = Multiset()
    completed: set[str] = set()
    failures: Multiset[str] = Multiset()
    for event in events:
        if event["event"] == "rendition.completed":
            renditions[event["job_id"]] += 1
        elif event["event"] == "job.completed":
            completed.add(event["job_id"])
        elif event["event"] == "job.failed":
            failures[event["code"]] += 1
    return {
        "renditions_per_completed_job": {job: renditions[job] for job in sorted(completed)},
        "failures_by_code": dict(failures),
    }


def _rebuilt_correctly(jobs: list[JobScript], events: list[dict[str, Any]]) -> int:
    """Jobs whose state and completed renditions, rebuilt from the events alone, are the truth."""
    state: dict[str, dict[str, Any]] = {}
    for event in events:
        apply(state, event)
    return sum(
        1
        for job in jobs
        if job.job_id in state
        and state[job.job_id]["state"] == job.outcome
        and state[job.job_id]["completed"] == job.completed
    )


def _tell(context: LessonContext, jobs: list[JobScript], events: list[dict[str, Any]]) -> None:
    state: dict[str, dict[str, Any]] = {}
    for event in events:
        apply(state, event)
    context.narrator.table(
        "jobs rebuilt from the stream (event sourcing)",
        {
            job.job_id[:8]: {
                "state": state.get(job.job_id, {}).get("state") or "unknown",
                "renditions done": len(state.get(job.job_id, {}).get("completed", ())),
            }
            for job in jobs
        },
    )


def run(context: LessonContext) -> Outcome:
    offset = context.knob("offset", "first")
    if isinstance(offset, str) and offset.isdigit():  # "0" from a form field: an offset number
        offset = int(offset)
    say = context.narrator.step
    jobs = script_jobs(context.rng)
    events = interleave(context.rng, jobs)
    with connect(context.broker_url) as connection:
        _declare(connection.channel())
        say(
            f"{STREAM} (a stream) and {WORK_QUEUE} (a classic queue) both bind"
            f" {EVENTS_EXCHANGE.name}."
        )
        _publish(context.broker_url, events)
        say(f"{len(jobs)} jobs publish {len(events)} events, as the workers do.")
        first, left, second = _drain_work_queue(connection.channel())
    say(
        f"A consumer takes {first} events from {WORK_QUEUE} and acks them: the broker now holds"
        f" {left}, and a second consumer gets {second}. Consumed is gone."
    )
    say(f"A late subscriber attaches to {STREAM} at x-stream-offset {offset!r}.")
    history = replay(context.broker_url, offset)
    rebuilt = _rebuilt_correctly(jobs, history)
    _tell(context, jobs, history)
    say("A second subscriber replays the same log into a read model for one question.")
    model = read_model(replay(context.broker_url, offset))
    truth = read_model([fields | {"event": key} for key, fields in events])
    replayed_again = sum(model["renditions_per_completed_job"].values())
    context.narrator.table(
        "the read model (CQRS): renditions per completed job, failures by code",
        {
            "renditions": {job[:8]: n for job, n in model["renditions_per_completed_job"].items()},
            "failures": model["failures_by_code"],
        },
    )
    counters: dict[str, Any] = {
        "events_published": len(events),
        "work_queue_consumed": first,
        "work_queue_left": left,
        "work_queue_second_consumer": second,
        "stream_replayed": len(history),
        "first_offset": history[0]["_offset"] if history else -1,
        "jobs": len(jobs),
        "jobs_rebuilt_correctly": rebuilt,
        "read_model_renditions": replayed_again,
        "read_model_matches": model == truth,
    }
    passed = (
        first == len(events)
        and left == 0
        and second == 0
        and len(history) == len(events)
        and rebuilt == len(jobs)
        and model == truth
    )
    return Outcome(passed=passed, counters=counters, lesson=LESSON, see=SEE)


LESSON = (
    "A queue hands each message to one consumer and forgets it; a log (a RabbitMQ stream) keeps"
    " every event in order until its retention says otherwise, so a subscriber that arrives late"
    " replays from offset 0. Rebuilding state from events is event sourcing; projecting them into"
    " a model shaped for one query is CQRS."
)
SEE = (
    "core/events.py (the job.* and rendition.* events); core/live_feed.py (the dashboard's model,"
    " fed by the same events, with the manifests as the truth since events there are transient)"
)

SCENARIO = Scenario(
    name="log",
    title="The log instead of the queue",
    summary="job events in a RabbitMQ stream: a late subscriber replays them from offset 0 and"
    " rebuilds every job (event sourcing) and a read model (CQRS); a work queue forgets",
    run=run,
    knobs={"offset": "first"},
)
