"""Lesson 'back-pressure': a bounded queue pushes back on a fast producer, which slows down.

The queue holds at most a few messages (``x-max-length``) and, when full, refuses new ones
(``x-overflow: reject-publish``): with publisher confirms on, the broker answers such a publish
with a nack, and the producer backs off and publishes the same message again. A slow consumer
drains the queue at its own pace; every message is consumed exactly once and the nacks are the
push-back. Without confirms the producer never hears the refusal (the broker drops the message
silently); with ``drop-head`` the broker makes room by discarding the oldest: either way messages
are lost. The verdict counts what the consumer received against what the producer meant to send.
"""

from __future__ import annotations

import time
from collections import Counter as Multiset
from typing import Any

import amqp
from amqp.exceptions import MessageNacked

from console.learn.lesson import LessonContext, Outcome, Scenario
from console.learn.scenarios.kit import ConsumerThread, Tally, connect, message, start_all, work

QUEUE = "back_pressure.uploads"
BOUND, MESSAGES = 5, 60
#: The consumer's time per message and the producer's back-off after a nack (doubling, capped).
WORK_MS, BACKOFF_S, BACKOFF_MAX_S = 15.0, 0.005, 0.08


def _publish_until_taken(
    channel: amqp.Channel, body: dict[str, Any], tally: dict[str, Any]
) -> None:
    """Publish with a confirm; on a nack (the queue is full) wait, longer each time, and publish
    the same message again."""
    backoff = BACKOFF_S
    while True:
        tally["attempts"] += 1
        try:
            channel.basic_publish_confirm(message(body), exchange="", routing_key=QUEUE)
            return
        except MessageNacked:
            tally["nacks"] += 1
            _, depth, _ = channel.queue_declare(QUEUE, passive=True)
            tally["depth_at_nack"] = max(tally["depth_at_nack"], depth)
            time.sleep(backoff)  # the producer slowing down: the point of the lesson
            backoff = min(backoff * 2, BACKOFF_MAX_S)


def _produce(channel: amqp.Channel, confirms: bool, tally: dict[str, Any]) -> None:
    """As fast as it can: with confirms, each message until the broker takes it; without, once."""
    for n in range(MESSAGES):
        body = {"upload": n}
        if confirms:
            _publish_until_taken(channel, body, tally)
        else:
            tally["attempts"] += 1
            channel.basic_publish(message(body), exchange="", routing_key=QUEUE)
    # The end marker, on the same channel (so after every message above), always confirmed.
    _publish_until_taken(channel, {"end": True}, {**tally, "attempts": 0, "nacks": 0})


def run(context: LessonContext) -> Outcome:
    overflow = str(context.knob("overflow", "reject-publish"))
    confirms = bool(context.knob("wait_for_confirms", True))
    say = context.narrator.step
    received = Tally()

    def consume(body: dict[str, Any], delivery: amqp.Message) -> None:
        work(0 if "end" in body else WORK_MS)
        received.add(body)

    tally: dict[str, Any] = {"attempts": 0, "nacks": 0, "depth_at_nack": 0}
    started = time.monotonic()
    with connect(context.broker_url) as connection:
        channel = connection.channel()
        arguments = {"x-max-length": BOUND, "x-overflow": overflow}
        channel.queue_declare(QUEUE, durable=False, auto_delete=False, arguments=arguments)
        say(f"{QUEUE} holds at most {BOUND} messages (x-overflow {overflow}).")
        consumer = start_all([ConsumerThread(context.broker_url, QUEUE, consume, name="slow")])[0]
        say(
            f"A consumer takes {WORK_MS:g} ms per message; a producer sends {MESSAGES} as fast as"
            + (" the broker confirms them." if confirms else " it can, without confirms.")
        )
        try:
            _produce(channel, confirms, tally)
            received.wait_for(lambda items: any("end" in body for body in items))
        finally:
            consumer.stop()
    counts = Multiset(body["upload"] for body in received.items if "upload" in body)
    counters: dict[str, Any] = {
        "published": MESSAGES,
        "publish_attempts": tally["attempts"],
        "nacks": tally["nacks"],
        "deepest_at_nack": tally["depth_at_nack"],
        "queue_bound": BOUND,
        "consumed": sum(counts.values()),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "lost": sum(1 for n in range(MESSAGES) if n not in counts),
        "seconds": round(time.monotonic() - started, 2),
    }
    if counters["nacks"]:
        say(
            f"The broker said no {tally['nacks']} times (at a nack the queue held up to"
            f" {tally['depth_at_nack']} of {BOUND}); the producer slowed to"
            f" {MESSAGES / counters['seconds']:.0f} messages/s, the consumer's pace"
            f" (~{1000 / WORK_MS:.0f}/s)."
        )
    context.narrator.table("producer and consumer", {"counts": counters})
    passed = (
        counters["consumed"] == MESSAGES
        and counters["lost"] == 0
        and counters["duplicates"] == 0
        and counters["nacks"] > 0
    )
    return Outcome(passed=passed, counters=counters, lesson=LESSON, see=SEE)


LESSON = (
    "A bounded queue turns overload into a signal: with reject-publish and publisher confirms the"
    " broker says no, and a producer that waits and retries slows to the consumer's pace without"
    " losing anything. Without confirms, or with drop-head, the same bound silently loses messages."
)
SEE = (
    "uploader/submit.py (check_admission: an upload is refused while the work queues hold"
    " max_queued_tasks); config/topology.py (the work queues overflow with reject-publish)"
)

SCENARIO = Scenario(
    name="back-pressure",
    title="Back-pressure: a bounded queue says no",
    summary="a full queue nacks a fast producer (reject-publish + confirms); it slows down and"
    " nothing is lost",
    run=run,
    knobs={"wait_for_confirms": True, "overflow": "reject-publish"},
)
