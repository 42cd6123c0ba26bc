"""Lesson 'request-reply': a synchronous question over queues, "how long is this upload?".

A responder (a worker: it ffprobes with the worker's own probe, worker/probe.py) consumes a request
queue. The client consumes RabbitMQ's direct reply-to pseudo-queue ``amq.rabbitmq.reply-to`` (no
reply queue to declare or delete: the reply goes straight to the asking channel), tags each
question with a correlation id, and waits a bounded time. With the responder down the question
waits in its queue and the client times out; when the responder comes back it answers that old
question too, to the same channel, and only the correlation id tells the stale reply from the one
the client is waiting for. The verdict compares what the client accepted with what each upload
really is.
"""

from __future__ import annotations

import base64
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amqp
from kombu import Connection

from config.settings import get_settings
from console.learn.lesson import LessonContext, Narrator, Outcome, Scenario
from console.learn.scenarios.kit import ConsumerThread, body_of, connect, message, start_all
from core.errors import InputError
from worker.probe import probe

REQUESTS = "request_reply.probe"
REPLY_TO = "amq.rabbitmq.reply-to"
#: Durations (s) of the small uploads the client asks about; the probe must tell them apart.
LENGTHS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
#: How close the answer must be to the upload's real length.
TOLERANCE_S = 0.3


def make_upload(folder: Path, seconds: float) -> Path:
    """A tiny H.264 clip of ``seconds`` (what a user might upload, only smaller)."""
    path = folder / f"upload-{seconds:g}s.mp4"
    video = f"testsrc2=size=96x64:rate=10:duration={seconds}"
    argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi"]
    argv += ["-i", video, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    subprocess.run([*argv, str(path)], check=True, capture_output=True, timeout=60)
    return path


def answer(body: dict[str, Any], delivery: amqp.Message) -> None:
    """The responder: probe the upload it was sent (under a name of its own) and reply to
    ``reply_to`` with the request's correlation id."""
    with tempfile.TemporaryDirectory(prefix="encodeq-learn-probe-") as folder:
        source = Path(folder) / "source"
        source.write_bytes(base64.b64decode(body["source_b64"]))
        try:
            found = probe(source, get_settings())
            reply: dict[str, Any] = {"duration": round(found.duration, 3), "width": found.width}
        except InputError as exc:
            reply = {"error": exc.code}
    props = delivery.properties
    delivery.channel.basic_publish(
        message(reply, correlation_id=props.get("correlation_id")),
        exchange="",
        routing_key=props["reply_to"],
    )


@dataclass
class Client:
    """Asks on a channel that consumes direct reply-to; ``correlate`` off: takes any reply."""

    connection: Connection
    narrator: Narrator
    correlate: bool
    timeout_s: float
    stale: int = 0
    _replies: list[amqp.Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.channel = self.connection.channel()
        # Consume first: RabbitMQ refuses a publish naming direct reply-to on a channel that is
        # not consuming it.
        self.channel.basic_consume(REPLY_TO, callback=self._replies.append, no_ack=True)

    def ask(self, upload: Path) -> dict[str, Any] | None:
        """The reply to "how long is ``upload``?", or None after ``timeout_s``."""
        correlation_id = uuid.uuid4().hex
        source = base64.b64encode(upload.read_bytes()).decode()
        question = {"question": "duration", "source_b64": source}
        self.channel.basic_publish(
            message(question, correlation_id=correlation_id, reply_to=REPLY_TO),
            exchange="",
            routing_key=REQUESTS,
        )
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self._replies:
                try:
                    self.connection.drain_events(timeout=left)
                except TimeoutError:
                    break
                continue
            reply = self._replies.pop(0)
            if not self.correlate or reply.properties.get("correlation_id") == correlation_id:
                return body_of(reply)
            self.stale += 1
            self.narrator.step(
                "A reply to an older question arrives: its correlation id is not"
                " the one asked with, so it is dropped."
            )
        return None


def _responder(context: LessonContext) -> ConsumerThread:
    return ConsumerThread(context.broker_url, REQUESTS, answer, prefetch=1, name="responder")


def _ask(client: Client, upload: Path, truth: float, tally: dict[str, Any]) -> None:
    """Ask, and score what the client received against the upload's real length."""
    started = time.monotonic()
    reply = client.ask(upload)
    if reply is None:
        tally["timeouts"] += 1
        client.narrator.step(f"{upload.name}: no reply within {client.timeout_s:g} s: timed out.")
        return
    tally["round_trip_ms"].append((time.monotonic() - started) * 1000)
    right = abs(float(reply.get("duration", -1)) - truth) <= TOLERANCE_S
    tally["correct" if right else "wrong"] += 1
    client.narrator.step(
        f"{upload.name}: the reply says {reply.get('duration')} s"
        + ("" if right else f", but this upload is {truth:g} s: a stale answer was accepted")
    )


def run(context: LessonContext) -> Outcome:
    lengths = context.rng.sample(LENGTHS, 5)
    tally: dict[str, Any] = {"correct": 0, "wrong": 0, "timeouts": 0, "round_trip_ms": []}
    with tempfile.TemporaryDirectory(prefix="encodeq-learn-rr-") as folder:
        uploads = [make_upload(Path(folder), seconds) for seconds in lengths]
        with connect(context.broker_url) as connection:
            waiting = _down_and_back(context, connection, uploads, lengths, tally)
    rtt = tally["round_trip_ms"]
    counters: dict[str, Any] = {
        "questions": len(uploads),
        "answered_correctly": tally["correct"],
        "wrong_answers": tally["wrong"],
        "timeouts": tally["timeouts"],
        "stale_replies_dropped": tally["stale"],
        "waiting_while_responder_down": waiting,
        "mean_round_trip_ms": round(sum(rtt) / len(rtt), 1) if rtt else 0.0,
    }
    context.narrator.table("what the client received", {"client": counters})
    passed = (
        counters["answered_correctly"] == len(uploads) - 1
        and counters["wrong_answers"] == 0
        and counters["timeouts"] == 1
        and waiting == 1
    )
    return Outcome(passed=passed, counters=counters, lesson=LESSON, see=SEE)


def _down_and_back(
    context: LessonContext,
    connection: Connection,
    uploads: list[Path],
    lengths: list[float],
    tally: dict[str, Any],
) -> int:
    """Three questions answered, one asked while the responder is down, one after it is back."""
    say = context.narrator.step
    connection.channel().queue_declare(REQUESTS, durable=False, auto_delete=False)
    client = Client(
        connection,
        context.narrator,
        correlate=bool(context.knob("correlate", True)),
        timeout_s=float(context.knob("timeout_s", 1.5)),
    )
    responder = start_all([_responder(context)])[0]
    say(f"A responder consumes {REQUESTS}; the client asks with reply-to {REPLY_TO}.")
    for upload, truth in zip(uploads[:3], lengths[:3], strict=True):
        _ask(client, upload, truth, tally)
    responder.stop()
    say("The responder goes down. The client asks again.")
    _ask(client, uploads[3], lengths[3], tally)
    _, waiting, consumers = connection.channel().queue_declare(REQUESTS, passive=True)
    say(f"The broker holds {waiting} question(s) in {REQUESTS}, with {consumers} consumer(s).")
    say("The responder comes back; it answers the old question first, then the new one.")
    responder = start_all([_responder(context)])[0]
    try:
        _ask(client, uploads[4], lengths[4], tally)
    finally:
        responder.stop()
    tally["stale"] = client.stale
    return int(waiting)


LESSON = (
    "Request-reply over a broker is a question with a reply-to address and a correlation id, and"
    " the asker must wait a bounded time: the answer may never come. A late answer still arrives,"
    " so match it by correlation id (or give requests a TTL) or you will accept someone else's."
)
SEE = "worker/probe.py: the probe the responder runs (the real probe task runs it the same way)"

SCENARIO = Scenario(
    name="request-reply",
    title="Request-reply: asking a worker a question",
    summary="direct reply-to, a correlation id and a timeout: a worker answers how long an upload"
    " is; a stale reply is told apart",
    run=run,
    knobs={"correlate": True, "timeout_s": 1.5},
)
