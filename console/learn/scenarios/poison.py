"""Lesson 'poison': a message that can never succeed is dead-lettered with its reason at once,
blocks nothing behind it, is explained by the DLQ inspector, and completes when replayed after
the fix.

Real parts: a ``python -m worker`` consumes the scratch vhost's work queues; ``encodeq upload``
sends a corrupt upload (random bytes named ``.mp4``: the poison) and a good clip after it. The
probe refuses the poison (a permanent input error: no retry), the worker rejects its message and
RabbitMQ dead-letters it to ``encodeq.dlq``, while the good job completes. The inspector
(dlq_inspector/operations.py) reads the broker's ``x-death`` (where it died) and the failure
record (why); the fix puts the original bytes back under the upload's key; the replay sends the
message back where it died, and the job completes. Counts come from the broker (DLQ depth by a
passive declare), the task events and the manifests in S3.

Knobs: ``dead_letter`` off runs the worker with Celery's default of acking a failed task
(console/learn/drill_worker.py), so the poison vanishes with nothing to explain or replay;
``fix_before_replay`` off replays without the fix, and the message dies again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kombu import Connection

from config.topology import (
    CONTROL_QUEUE_NAME,
    DEAD_LETTER_QUEUE_NAME,
    ENCODE_EXPRESS_QUEUE_NAME,
)
from console.learn.drill_worker import PIPELINE_QUEUES
from console.learn.lesson import Counters, LessonContext, Outcome, Scenario
from console.learn.rig import EventLog, Fleet, make_clip, upload, wait_until
from console.learn.scratch import settings_of
from console.waiting import WaitTimeout
from core.manifest import JobStore
from core.queue_depths import queue_depths
from core.storage import Storage, parse_uri
from dlq_inspector.broker import connect
from dlq_inspector.explain import Row
from dlq_inspector.filters import Selection
from dlq_inspector.operations import Inspector

JOB_S = 90.0
#: Dead-lettering at least once is the broker's own step after the reject: a moment, not more.
DEAD_LETTER_S = 10.0
POISON_BYTES = 64 * 1024
LESSON = (
    "A message that can never succeed must not be retried for ever nor block the queue: reject "
    "it without requeue and the broker dead-letters it, with where it died, while the rest "
    "flows. Keep why it failed next to it; fix the cause, then replay it where it came from."
)
SEE = "worker/failure_handling.py (reject, failure records), dlq_inspector/operations.py (replay)"


def start_worker(context: LessonContext, fleet: Fleet) -> None:
    """The real worker; with ``dead_letter`` off, the same worker acking failed tasks."""
    if context.knob("dead_letter", True):
        fleet.start("worker1")
    else:
        env = {"ENCODEQ_LEARN_ACKS_ON_FAILURE": "true"}
        options = ("--queues", PIPELINE_QUEUES)
        fleet.start("worker1", module="console.learn.drill_worker", env=env, options=options)
    fleet.wait_consuming(CONTROL_QUEUE_NAME, 1)
    fleet.wait_consuming(ENCODE_EXPRESS_QUEUE_NAME, 1)


def dead_letters(broker_url: str, wait_s: float = 0.0) -> int:
    """Messages in the DLQ (a passive declare), waiting up to ``wait_s`` for the first one."""

    def depth() -> int:
        with Connection(broker_url) as connection:
            [found] = queue_depths(connection, (DEAD_LETTER_QUEUE_NAME,))
        return found.messages or 0

    try:
        return wait_until(depth, wait_s, "a dead letter", every=0.2) if wait_s else depth()
    except WaitTimeout:
        return 0


def ended(events: EventLog, job_id: str, failures: int = 1) -> bool:
    """The job completed, or failed ``failures`` times (a failed job publishes job.failed)."""
    events.pump()
    done = events.of("job.completed", job_id=job_id)
    return bool(done) or len(events.of("job.failed", job_id=job_id)) >= failures


def explain(context: LessonContext, storage: Storage, job_id: str) -> Row | None:
    """The inspector's row for the poison's dead letter: x-death's reason and queue, the
    failure record's code and message (None when the DLQ holds nothing of it)."""
    with connect(context.broker_url) as conn:
        inspector = Inspector(conn, DEAD_LETTER_QUEUE_NAME, storage, settings_of(context.env))
        rows = inspector.select(Selection(job=job_id)).rows()
    return rows[0] if rows else None


def fix_and_replay(
    context: LessonContext, storage: Storage, job_id: str, row: Row, original: Path
) -> int:
    """Put the original bytes back under the upload's key (unless the knob says not to), then
    replay the dead letter; how many messages the replay moved."""
    say = context.narrator.step
    if context.knob("fix_before_replay", True):
        manifest = JobStore(storage).load(job_id)
        assert manifest is not None
        bucket, key = parse_uri(manifest.source.uri)
        storage.client.fput_object(bucket, key, str(original), content_type="video/mp4")
        say(f"the fix: the original upload is put back at {manifest.source.uri}")
    else:
        say("no fix: the dead letter is replayed as it is")
    with connect(context.broker_url) as conn:
        inspector = Inspector(conn, DEAD_LETTER_QUEUE_NAME, storage, settings_of(context.env))
        moved = inspector.replay(Selection(ids={row.id}), via="encodeq learn")
    say(f"replayed {moved.total} message(s) back to {row.queue}")
    return moved.total


def story(context: LessonContext, events: EventLog, files: dict[str, Path]) -> Counters:
    """Upload, dead-letter, explain, fix, replay; the counts along the way."""
    say, storage = context.narrator.step, Storage(settings_of(context.env))
    poison_id, good_id = upload(context, files["poison"], files["good"], mode="per-rung")
    say(f"encodeq upload: the poison (job {poison_id[:8]}), then a good clip (job {good_id[:8]})")
    wait_until(lambda: ended(events, poison_id) and ended(events, good_id), JOB_S, "both jobs")
    dead = dead_letters(context.broker_url, DEAD_LETTER_S)
    runs = len(events.of("task.started", job_id=poison_id, task="probe"))
    good = "completed" if events.of("job.completed", job_id=good_id) else "failed"
    say(f"the poison's probe ran {runs} time(s), the DLQ holds {dead}; the good job {good}")
    row = explain(context, storage, poison_id) if dead else None
    counters: Counters = {
        "poison_probe_runs": runs,
        "dead_letters": dead,
        "good_job_completed": bool(events.of("job.completed", job_id=good_id)),
        "death_reason": row.reason if row else "",
        "died_in": row.queue if row else "",
        "failure_code": (row.code or "") if row else "",
    }
    if row is None:
        say("nothing in the DLQ: nothing to explain, nothing to replay")
        counters.update(replayed=0, dead_letters_after=0, poison_completed=False)
        return counters
    say(f"the inspector: died in {row.queue} ({row.reason}); why: {row.code}: {row.error}")
    counters["replayed"] = fix_and_replay(context, storage, poison_id, row, files["original"])
    wait_until(lambda: ended(events, poison_id, failures=2), JOB_S, "the replayed job")
    counters["dead_letters_after"] = dead_letters(context.broker_url)
    counters["poison_completed"] = bool(events.of("job.completed", job_id=poison_id))
    state = "completed" if counters["poison_completed"] else "failed again"
    say(f"the replayed job {poison_id[:8]} {state}; the DLQ holds {counters['dead_letters_after']}")
    return counters


def verdict(c: Counters) -> bool:
    dead_lettered = c["dead_letters"] == 1 and c["poison_probe_runs"] == 1
    explained = c["death_reason"] == "rejected" and c["failure_code"] == "not_a_video"
    replayed = c["replayed"] == 1 and c["poison_completed"] is True and c["dead_letters_after"] == 0
    return dead_lettered and c["good_job_completed"] is True and explained and replayed


def make_files(context: LessonContext) -> dict[str, Path]:
    assert context.workdir is not None
    poison = context.workdir / "poison.mp4"
    poison.write_bytes(context.rng.randbytes(POISON_BYTES))  # seeded: the same bytes per seed
    return {
        "poison": poison,
        "good": make_clip(context.workdir / "good.mp4"),
        "original": make_clip(context.workdir / "original.mp4", size="320x240"),
    }


def run(context: LessonContext) -> Outcome:
    files = make_files(context)
    with Fleet(context) as fleet, EventLog(context.broker_url, ("job.*", "task.*")) as events:
        start_worker(context, fleet)
        how = (
            "rejects failures (dead-letter)"
            if context.knob("dead_letter", True)
            else "ACKS failures"
        )
        context.narrator.step(f"a worker consumes the work queues; it {how}")
        counters = story(context, events, files)
    columns: dict[str, dict[str, Any]] = {
        "before the fix": {"dead letters": counters["dead_letters"], "poison done": False},
        "after the replay": {
            "dead letters": counters["dead_letters_after"],
            "poison done": counters["poison_completed"],
        },
    }
    context.narrator.table("the poison message", columns)
    return Outcome(passed=verdict(counters), counters=counters, lesson=LESSON, see=SEE)


SCENARIO = Scenario(
    name="poison",
    title="Poison messages and the dead-letter queue",
    summary="a corrupt upload is dead-lettered with its reason, blocks nothing, replayed if fixed",
    run=run,
    knobs={"dead_letter": True, "fix_before_replay": True},
)
