"""Lesson 'delivery': a worker killed mid-task, three times: under early ack the task is gone
(at most once); under late ack it is delivered again and its output written twice (at least
once); with an idempotent output the second run rewrites the same object with the same bytes
(effectively exactly once).

Each act publishes one real task on the encode queue of the scratch vhost to the drill worker
(console/learn/drill_worker.py: the project's worker with a task that acks early and one whose
output key is new per run), waits until the task says it holds (before or after writing its
output), SIGKILLs the worker's whole process group, and asks the broker whether the message came
back (ready messages by a passive declare once the dead consumer is gone). A new worker takes
whatever came back. The verdict counts runs from the task events, objects and bytes from S3.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from kombu import Connection

from config.topology import ENCODE_QUEUE_NAME, declare_topology
from console.learn.drill_worker import (
    HOLD_AFTER,
    HOLD_BEFORE,
    LEARN_BUCKET,
    RENDER_EARLY_TASK,
    RENDER_TASK,
)
from console.learn.lesson import Counter, Counters, LessonContext, Outcome, Scenario
from console.learn.rig import EventLog, Fleet, consumers, make_clip, wait_until
from console.learn.scratch import settings_of
from core.celery_app import create_app
from core.queue_depths import queue_depths
from core.storage import Storage

DRILL_WORKER = "console.learn.drill_worker"
SOURCE_KEY = "delivery/source.mp4"
#: A task runs in about a second; a redelivery waits for a worker's start (a few seconds).
TASK_S = 60.0
LESSON = (
    "Early ack hands the message over before the work: a crash then loses the task (at most "
    "once). Late ack keeps it in the broker until the work is done, so a crash means it runs "
    "again, and anything it wrote may be written twice (at least once). Make the output "
    "idempotent (a key the task decides, the same bytes) and the duplicate run is harmless: "
    "effectively exactly once."
)
SEE = "core/celery_app.py (task_acks_late), worker/modes/per_rung.py (deterministic keys)"


@dataclass(frozen=True)
class Act:
    name: str
    title: str
    task: str
    hold: str
    idempotent: bool


def acts(context: LessonContext) -> list[Act]:
    """The three acts; the knobs can take late acks or idempotent keys away from the last two."""
    late = RENDER_TASK if context.knob("late_ack", True) else RENDER_EARLY_TASK
    idempotent = bool(context.knob("idempotent_keys", True))
    return [
        Act("early", "early ack", RENDER_EARLY_TASK, HOLD_BEFORE, False),
        Act("late", "late ack, a new key per run", late, HOLD_AFTER, False),
        Act("idempotent", "late ack, one key, same bytes", late, HOLD_AFTER, idempotent),
    ]


class Stage:
    """What the acts share: one worker at a time, the events, S3, a publisher."""

    def __init__(self, context: LessonContext, fleet: Fleet, events: EventLog) -> None:
        self.context, self.fleet, self.events = context, fleet, events
        self.storage = Storage(settings_of(context.env))
        self.app = create_app(set_as_current=False)
        self.app.conf.broker_url = context.broker_url
        self.started = 0

    def next_worker(self) -> None:
        """A new drill worker, consuming the encode queue before this returns."""
        self.started += 1
        name = f"learn{self.started}"
        self.context.narrator.step(f"worker {name} starts and consumes {ENCODE_QUEUE_NAME}")
        self.fleet.start(name, module=DRILL_WORKER)
        self.fleet.wait_consuming(ENCODE_QUEUE_NAME, 1)

    def publish(self, act: Act) -> str:
        args = [SOURCE_KEY, f"delivery/{act.name}", act.idempotent, act.hold]
        with self.app.connection_for_write() as connection:
            sent = self.app.send_task(
                act.task, args=args, queue=ENCODE_QUEUE_NAME, connection=connection
            )
        return str(sent.id)

    def ready(self) -> int:
        """Messages waiting in the encode queue, as the broker counts them now."""
        with Connection(self.context.broker_url) as connection:
            [depth] = queue_depths(connection, (ENCODE_QUEUE_NAME,))
        return depth.messages or 0

    def digest(self, key: str) -> str:
        return hashlib.sha256(self.storage.get_bytes(LEARN_BUCKET, key) or b"").hexdigest()

    def objects(self, act: Act) -> list[str]:
        return list(self.storage.list_keys(LEARN_BUCKET, f"delivery/{act.name}/"))


def run_act(stage: Stage, act: Act) -> dict[str, Counter]:
    """One act: publish, wait for the hold, kill, count what came back and what was written."""
    say, events = stage.context.narrator.step, stage.events
    task_id = stage.publish(act)
    say(f"[{act.title}] task {task_id[:8]} published to {ENCODE_QUEUE_NAME}")
    held = events.wait(
        lambda e: e["event"] == "learn.holding" and e.get("task_id") == task_id, TASK_S, "the hold"
    )
    written = events.of("learn.output", task_id=task_id)
    first_bytes = stage.digest(written[0]["key"]) if written else ""
    where = "after writing its output" if written else "before writing its output"
    say(f"[{act.title}] {held['worker']} holds the task {where}: kill -9 the whole worker")
    stage.fleet.holding(held["worker"]).kill()
    wait_until(
        lambda: consumers(stage.context.broker_url, ENCODE_QUEUE_NAME) == 0,
        30,
        "the dead consumer to go",
    )
    back = stage.ready()
    say(f"[{act.title}] the broker holds {back} message(s) for the encode queue now")
    stage.next_worker()
    if back:
        events.wait(
            lambda e: e["event"] == "task.finished" and e.get("task_id") == task_id,
            TASK_S,
            "the redelivered task to finish",
        )
    runs = events.of("task.started", task_id=task_id)
    keys = stage.objects(act)
    stored = ", ".join(k.rsplit("/", 1)[-1] for k in keys) or "nothing"
    say(f"[{act.title}] the task ran {len(runs)} time(s); S3 holds {len(keys)} object(s): {stored}")
    counters: dict[str, Counter] = {
        "runs": len(runs),
        "redelivered": sum(bool(r.get("redelivered")) for r in runs),
        "back_in_queue": back,
        "objects": len(keys),
    }
    if act.name == "idempotent":
        counters["same_bytes"] = bool(keys) and all(stage.digest(k) == first_bytes for k in keys)
    return counters


def verdict(found: dict[str, dict[str, Counter]]) -> bool:
    early, late, idem = found["early"], found["late"], found["idempotent"]
    at_most_once = early["runs"] == 1 and early["back_in_queue"] == 0 and early["objects"] == 0
    at_least_once = late["runs"] == 2 and late["redelivered"] == 1 and late["objects"] == 2
    effectively_once = idem["runs"] == 2 and idem["objects"] == 1 and idem["same_bytes"] is True
    return at_most_once and at_least_once and effectively_once


def run(context: LessonContext) -> Outcome:
    assert context.workdir is not None
    source = make_clip(context.workdir / "source.mp4")
    Storage(settings_of(context.env)).put_file(LEARN_BUCKET, SOURCE_KEY, source, "video/mp4")
    with Connection(context.broker_url) as connection:
        declare_topology(connection)
    found: dict[str, dict[str, Counter]] = {}
    with Fleet(context) as fleet, EventLog(context.broker_url, ("learn.*", "task.*")) as events:
        stage = Stage(context, fleet, events)
        stage.next_worker()
        for act in acts(context):
            found[act.name] = run_act(stage, act)
    context.narrator.table("a worker killed mid-task", {a: dict(c) for a, c in found.items()})
    counters: Counters = {
        f"{act}_{what}": value for act, c in found.items() for what, value in c.items()
    }
    return Outcome(passed=verdict(found), counters=counters, lesson=LESSON, see=SEE)


def _knobs() -> dict[str, Any]:
    return {"late_ack": True, "idempotent_keys": True}


SCENARIO = Scenario(
    name="delivery",
    title="Delivery guarantees: at most once, at least once, effectively once",
    summary="kill a worker mid-task under early ack, late ack, and with idempotent output",
    run=run,
    knobs=_knobs(),
)
