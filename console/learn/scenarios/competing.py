"""Lesson 'consumers-vs-pubsub': one job's encode tasks are shared out among competing workers,
each task to exactly one, while every subscriber of the events exchange receives every event.

Real parts only: two ``python -m worker`` processes consume the encode queue of the scratch vhost,
``encodeq upload`` sends a 720p clip in per-rung mode (four rungs, four tasks), and three
subscribers bind the events exchange: ``encodeq watch``'s live feed (core/live_feed.py), a
"notifications" and an "analytics" ``EventSubscription``, each with a private queue of its own.
The verdict counts task runs from the task events (who ran what, how often), and what each
subscriber actually received. The knob ``private_subscriber_queues`` off makes the three consume
one shared queue: then they compete too, and each event reaches only one of them.
"""

from __future__ import annotations

import json
from collections import Counter as Tally
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from kombu import Connection, Queue

from config.topology import (
    CONTROL_QUEUE_NAME,
    ENCODE_EXPRESS_QUEUE_NAME,
    ENCODE_LANES,
    EVENTS_EXCHANGE,
)
from console.learn.lesson import Counters, LessonContext, Outcome, Scenario
from console.learn.rig import Fleet, make_clip, queue_counts, upload, wait_until
from console.learn.scratch import settings_of
from core.events import EventSubscription
from core.live_feed import LIVE_EVENTS, LiveFeed
from core.manifest import JobStore
from core.monitor import Monitor
from core.queue_depths import queue_depths
from core.storage import Storage

WORKERS = 2
SUBSCRIBERS = ("watch", "notifications", "analytics")
SHARED_QUEUE = "encodeq.events.learn-shared"
JOB_S = 120.0
LESSON = (
    "Competing consumers share one queue: the broker gives each message to one of them, so "
    "adding workers adds throughput. Publish-subscribe gives every subscriber a queue of its own "
    "bound to the exchange, so each one gets every event. The difference is not in the message "
    "but in the queues: one shared queue, or one per subscriber."
)
SEE = "config/topology.py (the work queues), core/events.py (EventSubscription: a queue each)"


class Subscriber:
    """One subscriber: its name, how it takes what arrived, what it received."""

    def __init__(
        self, name: str, queue: str, drain: Callable[[float], list[dict[str, Any]]]
    ) -> None:
        self.name, self.queue, self.drain = name, queue, drain
        self.received: list[dict[str, Any]] = []

    def pump(self, timeout: float) -> int:
        new = self.drain(timeout)
        self.received += new
        return len(new)


def _drain(subscription: EventSubscription) -> Callable[[float], list[dict[str, Any]]]:
    return lambda timeout: list(subscription.events(timeout=timeout))


def subscribe(context: LessonContext, stack: ExitStack) -> list[Subscriber]:
    """The three subscribers, each on a connection of its own; subscribed before this returns."""
    private = bool(context.knob("private_subscriber_queues", True))
    storage = Storage(settings_of(context.env))
    found = []
    for name in SUBSCRIBERS:
        connection = stack.enter_context(Connection(context.broker_url, heartbeat=0))
        connection.ensure_connection(max_retries=3)
        if private and name == "watch":
            feed = LiveFeed(connection, JobStore(storage), Monitor(), poll_every_s=3.0)
            stack.enter_context(feed)
            found.append(Subscriber(name, feed.queue_name, lambda t, f=feed: f.tick(t).events))
            continue
        subscription = EventSubscription(connection, LIVE_EVENTS)
        if not private:  # the mechanism broken: one queue, consumed by all three
            subscription.queue = Queue(
                SHARED_QUEUE,
                EVENTS_EXCHANGE,
                routing_key=LIVE_EVENTS[0],
                auto_delete=True,
                durable=False,
            )
        stack.enter_context(subscription)
        found.append(Subscriber(name, str(subscription.queue.name), _drain(subscription)))
    return found


def follow(subscribers: list[Subscriber], job_id: str) -> list[dict[str, Any]]:
    """Until the job's last event (its finalize task's end, or its failure) arrived somewhere
    and every subscriber is quiet; every distinct event received, in the order first seen."""

    def union() -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for s in subscribers:
            for e in s.received:
                if e.get("job_id") == job_id:
                    seen.setdefault(json.dumps(e, sort_keys=True), e)
        return list(seen.values())

    def finished() -> bool:
        for s in subscribers:
            s.pump(0.05)
        return any(
            (e["event"] == "task.finished" and e.get("task") == "finalize")
            or e["event"] == "job.failed"
            for e in union()
        )

    wait_until(finished, JOB_S, f"job {job_id} to finish", every=0)
    while sum(s.pump(0.3) for s in subscribers):
        pass  # until a whole round brings nothing more
    return union()


def count(
    context: LessonContext, subscribers: list[Subscriber], job_id: str, events: list[dict[str, Any]]
) -> Counters:
    starts = [e for e in events if e["event"] == "task.started" and e.get("task") == "encode"]
    runs = Tally(e["task_id"] for e in starts)
    workers = Tally(str(e.get("worker_hostname") or e.get("worker")).split("@")[0] for e in starts)
    manifest = JobStore(Storage(settings_of(context.env))).load(job_id)
    with Connection(context.broker_url) as connection:
        left = sum(d.messages or 0 for d in queue_depths(connection, ENCODE_LANES))
    # The queues the three consume, as the broker lists them: one each, or one for all.
    listed = queue_counts(context.broker_url)
    event_queues = {s.queue for s in subscribers if s.queue in listed}
    counters: Counters = {
        "rungs": len(manifest.renditions) if manifest else 0,
        "job_completed": bool(manifest and manifest.state == "completed"),
        "encode_tasks": len(runs),
        "most_runs_of_a_task": max(runs.values(), default=0),
        "workers_used": len(workers),
        "encode_messages_left": left,
        "subscriber_queues": len(event_queues),
        "events_published": len(events),
    }
    counters.update({f"tasks_{w}": n for w, n in sorted(workers.items())})
    for s in subscribers:
        counters[f"events_{s.name}"] = sum(e.get("job_id") == job_id for e in s.received)
    return counters


def verdict(counters: Counters) -> bool:
    competing = (
        counters["job_completed"] is True
        and counters["encode_tasks"] == counters["rungs"]
        and counters["most_runs_of_a_task"] == 1
        and counters["workers_used"] == WORKERS
        and counters["encode_messages_left"] == 0
    )
    published = counters["events_published"]
    pubsub = published > 0 and all(counters[f"events_{s}"] == published for s in SUBSCRIBERS)
    return competing and pubsub


def run(context: LessonContext) -> Outcome:
    assert context.workdir is not None
    say = context.narrator.step
    source = make_clip(context.workdir / "clip 720p.mp4", size="1280x720", seconds=2.0, audio=True)
    with Fleet(context) as fleet, ExitStack() as stack:
        for i in range(1, WORKERS + 1):
            fleet.start(f"worker{i}")
        say(f"{WORKERS} workers (python -m worker) start: competing consumers of the same queues")
        fleet.wait_consuming(ENCODE_EXPRESS_QUEUE_NAME, WORKERS)
        fleet.wait_consuming(CONTROL_QUEUE_NAME, WORKERS)
        subscribers = subscribe(context, stack)
        how = (
            "a private queue each"
            if context.knob("private_subscriber_queues", True)
            else "ONE shared queue"
        )
        say(f"3 subscribers bind encodeq.events: {', '.join(SUBSCRIBERS)} ({how})")
        [job_id] = upload(context, source, mode="per-rung")
        say(f"encodeq upload: job {job_id[:8]}, per-rung mode: one encode task per rung")
        events = follow(subscribers, job_id)
        counters = count(context, subscribers, job_id, events)
    tasks, published = counters["encode_tasks"], counters["events_published"]
    say(f"job {job_id[:8]} ended: {tasks} encode tasks, {published} events published")
    workers = {k.removeprefix("tasks_"): v for k, v in counters.items() if k.startswith("tasks_")}
    received = {s: counters[f"events_{s}"] for s in SUBSCRIBERS}
    context.narrator.table(
        "the same job, two patterns",
        {"encode tasks run (competing)": workers, "events received (pub-sub)": received},
    )
    return Outcome(passed=verdict(counters), counters=counters, lesson=LESSON, see=SEE)


SCENARIO = Scenario(
    name="consumers-vs-pubsub",
    title="Competing consumers vs publish-subscribe",
    summary="one job's tasks spread over 2 workers, one each; 3 subscribers get every event",
    run=run,
    knobs={"private_subscriber_queues": True},
)
