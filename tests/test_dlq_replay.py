"""``encodeq dlq replay`` against the real broker: targets, ids, parking, refusals, kills, Ctrl-C.

The module runs on a RabbitMQ vhost of its own, so the work queues hold nobody else's messages:
messages die in them for real (published through the work exchange, rejected, dead-lettered by the
quorum queue), and a test can count exactly what arrives where. Every command is filtered to a
task name of the test's own or to ids.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import amqp
import pytest
from support.broker import broker, private_vhost, queue_state
from support.commands import ENCODEQ, dlq, dlq_json
from support.dlq import (
    celery_message,
    dlq_of_task,
    kill_in_work_queue,
    kill_into_dlq,
    origin_queue,
    queue_messages,
)
from support.waiting import wait_for

from config.topology import (
    CONTROL_QUEUE_NAME,
    DEAD_LETTER_QUEUE_NAME,
    ENCODE_QUEUE_NAME,
    PARKED_QUEUE_NAME,
    REPLAY_COUNT_HEADER,
    declare_topology,
)


@pytest.fixture(scope="module", autouse=True)
def own_broker() -> Iterator[str]:
    with private_vhost("replay") as url:
        yield url


def fresh(prefix: str) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"dlqtest.{prefix}.{tag}", origin_queue(f"dlqtest.{prefix}.{tag}")


def listed(task: str) -> list[dict]:
    return dlq_json("list", "--task", task)


def of_task(messages: list, task: str) -> list:
    return [m for m in messages if (m.headers or {}).get("task") == task]


def test_replay_by_id_goes_back_byte_for_byte_while_new_deaths_arrive() -> None:
    task = f"dlqtest.byid.{uuid.uuid4().hex[:8]}"
    first = [celery_message(task) for _ in range(3)]
    kill_in_work_queue("control", first)
    rows = listed(task)
    assert len(rows) == 3
    assert all(r["queue"] == CONTROL_QUEUE_NAME and r["reason"] == "rejected" for r in rows)
    chosen = rows[1]
    # New deaths arrive between list and replay: the id still names the same message.
    kill_in_work_queue("control", [celery_message(task) for _ in range(2)])
    assert {r["id"] for r in rows} <= {r["id"] for r in listed(task)}

    report = dlq_json("replay", chosen["id"])
    assert report["ids"] == [chosen["id"]] and report["targets"] == {"encodeq -> control": 1}
    [back] = queue_messages(CONTROL_QUEUE_NAME, consume=True)
    body, props = next(m for m in first if m[1]["application_headers"]["id"] == chosen["key"])
    assert back.body == body
    for name in ("content_type", "content_encoding", "delivery_mode", "correlation_id"):
        assert back.properties[name] == props[name]
    headers = dict(back.headers)
    assert headers.pop(REPLAY_COUNT_HEADER) == 1
    original = dlq_of_task(task)  # the others are still there, x-death included
    assert len(original) == 4
    assert {k: v for k, v in headers.items() if not k.startswith("x-")} == props[
        "application_headers"
    ]
    assert headers["x-death"][0]["queue"] == CONTROL_QUEUE_NAME
    remaining = {r["id"] for r in listed(task)}
    assert chosen["id"] not in remaining and len(remaining) == 4

    gone = dlq("replay", chosen["id"])
    assert gone.returncode == 1 and "no message" in gone.stderr and chosen["id"] in gone.stderr
    assert dlq("show", chosen["id"]).returncode == 1


def test_message_replayed_too_often_is_parked_unless_forced() -> None:
    task = f"dlqtest.park.{uuid.uuid4().hex[:8]}"
    kill_in_work_queue("encode", [celery_message(task)])
    [row] = listed(task)
    env = {"ENCODEQ_DLQ_MAX_REPLAYS": "1"}
    assert dlq_json("replay", row["id"], env=env)["targets"] == {"encodeq -> encode": 1}
    # It dies again in the same place: same id, replayed once, x-death count 2.
    [again] = queue_messages(ENCODE_QUEUE_NAME)
    _reject(ENCODE_QUEUE_NAME, 1)
    [row2] = wait_for(lambda: listed(task), 30, "the second death")
    assert row2["id"] == row["id"] and row2["replays"] == 1

    plan = dlq_json("replay", row["id"], "--dry-run", env=env)
    assert plan["parked"] == [row["id"]]
    report = dlq_json("replay", row["id"], env=env)
    assert report["targets"] == {"parked": 1}
    assert listed(task) == [] and queue_messages(ENCODE_QUEUE_NAME) == []
    [parked] = of_task(queue_messages(PARKED_QUEUE_NAME), task)
    assert parked.headers[REPLAY_COUNT_HEADER] == 1 and parked.body == again.body

    forced = dlq_json("replay", row["id"], "--queue", PARKED_QUEUE_NAME, "--force", env=env)
    assert forced["targets"] == {"encodeq -> encode": 1}
    [back] = queue_messages(ENCODE_QUEUE_NAME, consume=True)
    assert back.headers[REPLAY_COUNT_HEADER] == 2


def _reject(queue: str, count: int) -> None:
    """Reject ``count`` messages of ``queue`` without requeue (they die), waiting for each: a
    quorum queue takes back a returned delivery a moment after the channel closed."""
    with broker() as conn:
        ch = conn.channel()
        for _ in range(count):
            message = wait_for(
                lambda: ch.basic_get(queue, no_ack=False), 30, f"a message in {queue}"
            )
            ch.basic_reject(message.delivery_tag, requeue=False)
        ch.close()


def _die_via(exchange: str, routing_key: str, queue: str, message: tuple[bytes, dict]) -> None:
    """Publish through ``exchange`` and reject from ``queue``: a real dead letter whose x-death
    names that exchange and routing key."""
    with broker() as conn:
        ch = conn.connection.channel()
        ch.basic_publish(amqp.Message(message[0], **message[1]), exchange, routing_key)
        while (got := ch.basic_get(queue, no_ack=False)) is None:
            pass
        ch.basic_reject(got.delivery_tag, requeue=False)
        ch.close()


def _forge_into_dlq(message: tuple[bytes, dict], queue: str, exchange: str, key: str) -> None:
    """Put a message in the DLQ whose x-death says it died in ``queue``, routed by ``exchange``
    and ``key``: what an unchecked import let in (x-death is just a header)."""
    body, props = message
    now = datetime.now(UTC).replace(tzinfo=None)
    death = {"count": 1, "reason": "rejected", "queue": queue, "exchange": exchange}
    death.update({"routing-keys": [key], "time": now})
    first = {"queue": queue, "reason": "rejected", "exchange": exchange}
    headers = {**props["application_headers"], "x-death": [death]}
    headers.update({f"x-first-death-{k}": v for k, v in first.items()})
    with broker() as conn:
        ch = conn.connection.channel()
        ch.confirm_select()
        message_out = amqp.Message(body, **{**props, "application_headers": headers})
        ch.basic_publish_confirm(message_out, "", DEAD_LETTER_QUEUE_NAME, mandatory=True)
        ch.close()


@pytest.mark.slow
def test_replay_keeps_what_it_may_not_send_and_says_why() -> None:
    """Only the work queues (and the parked queue) take replays, whatever x-death says; a message
    with CC/BCC or a user_id goes nowhere. Kept messages stay in the DLQ, in order, with the
    reason in the output and the audit trail; ``--to`` may not name anything else either."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    task = f"dlqtest.refuse.{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    victim = f"victim-{tag}@{socket.gethostname()}.celery.pidbox"  # shaped like a worker's
    side = f"dlqtest.side.{tag}"
    reply = f"{uuid.uuid4()}.reply.celery.pidbox"
    with broker() as conn:
        declare_topology(conn)
        ch = conn.connection.channel()
        dead_letters = {"x-dead-letter-exchange": "encodeq.dlx"}
        for name in (victim, side):
            ch.queue_declare(name, durable=True, auto_delete=False, arguments=dead_letters)
        ch.queue_bind(side, "amq.topic", routing_key=side)
        ch.close()

    # What each message's row must say, by its task id.
    expected: dict[str, str] = {}

    def make(why: str, **headers: object) -> tuple[bytes, dict]:
        message = celery_message(task, **headers)
        expected[message[1]["application_headers"]["id"]] = why
        return message

    pidbox = f"celery@{tag}.celery.pidbox"
    # Where each forged x-death says it died: (queue, exchange, routing key, expected reason).
    forged = [
        ("amq.rabbitmq.reply-to", "", "amq.rabbitmq.reply-to", "queue amq.rabbitmq.reply-to"),
        (pidbox, "celery.pidbox", "", "celery.pidbox -> (no routing key) is not a work queue"),
        (reply, "reply.celery.pidbox", reply.split(".", 1)[0], "reply.celery.pidbox -> "),
        (CONTROL_QUEUE_NAME, "amq.direct", "control", "amq.direct -> control is not a work"),
    ]
    deaths = [
        lambda: kill_into_dlq(victim, [make(f"queue {victim} is not a work queue")]),
        lambda: kill_into_dlq(side, [make(f"queue {side} is not a work queue")]),
        lambda: _die_via("amq.topic", side, side, make(f"amq.topic -> {side} is not a work")),
        lambda: kill_in_work_queue("control", [make("a CC header", CC=[victim])]),
        *(
            lambda q=q, x=x, k=k, why=why: _forge_into_dlq(make(why), q, x, k)
            for q, x, k, why in forged
        ),
    ]
    with_user = celery_message(task)
    with_user[1]["user_id"] = "guest"  # the broker checks it against the connection's user
    expected[with_user[1]["application_headers"]["id"]] = "user_id"
    deaths.append(lambda: kill_in_work_queue("control", [with_user]))
    expired = celery_message(task, expires="2001-01-01T00:00:00+00:00")  # replayable
    deaths.append(lambda: kill_in_work_queue("control", [expired]))
    rng.shuffle(deaths)
    for die in deaths:
        die()
    rows = wait_for(lambda: (r := listed(task)) and len(r) == len(deaths) and r, 30, "the deaths")
    by_key = {r["key"]: r for r in rows}
    refused = {by_key[key]["id"]: why for key, why in expected.items()}
    expired_id = by_key[expired[1]["application_headers"]["id"]]["id"]
    before = [(m.body, m.headers) for m in dlq_of_task(task)]

    plan = dlq_json("replay", "--task", task, "--dry-run")
    assert plan["targets"] == {"encodeq -> control": 1} and plan["expired"] == [expired_id]
    assert set(plan["refused"]) == set(refused)
    for msg_id, why in refused.items():
        assert why in plan["refused"][msg_id], (msg_id, plan["refused"][msg_id])

    result = dlq("replay", "--task", task, "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ids"] == [expired_id] and report["targets"] == {"encodeq -> control": 1}
    kept = {f["id"]: f["why"] for f in report["failed"]}
    assert set(kept) == set(refused)
    assert all(why in kept[i] and kept[i].startswith("not replayed") for i, why in refused.items())
    # Kept in place and in order; nothing reached any other queue.
    expired_key = expired[1]["application_headers"]["id"]
    after = [(m.body, m.headers) for m in dlq_of_task(task)]
    assert after == [(b, h) for b, h in before if h["id"] != expired_key]
    [back] = queue_messages(CONTROL_QUEUE_NAME, consume=True)
    assert back.headers["id"] == expired_key
    for queue in (victim, side, ENCODE_QUEUE_NAME, PARKED_QUEUE_NAME):
        assert queue_state(queue)[0] == 0, queue
    human = dlq("replay", "--task", task)
    assert human.returncode == 1
    assert all(f"kept {i}" in human.stderr for i in refused), human.stderr
    history = dlq_json("history")
    entry = next(e for e in reversed(history) if e["action"] == "replay")
    assert {f["id"] for f in entry["failed"]} == set(refused)

    # --to may name only a work queue or the parked queue.
    elsewhere = (victim, "celery.pidbox", "amq.rabbitmq.reply-to", reply, side)
    for target in (*elsewhere, DEAD_LETTER_QUEUE_NAME):
        refused_to = dlq("replay", "--task", task, "--to", target)
        assert refused_to.returncode == 2 and "replays go only to" in refused_to.stderr, target
    assert len(dlq_of_task(task)) == len(refused)
    # ... and that is the operator's way out for a message whose x-death names somewhere else;
    # not for one with a CC header or a user_id.
    side_id = next(i for i, why in refused.items() if why.startswith(f"queue {side}"))
    moved = dlq_json("replay", side_id, "--to", CONTROL_QUEUE_NAME)
    assert moved["targets"] == {f"queue {CONTROL_QUEUE_NAME}": 1}
    assert len(queue_messages(CONTROL_QUEUE_NAME, consume=True)) == 1
    cc_id = next(i for i, why in refused.items() if why == "a CC header")
    still = dlq("replay", cc_id, "--to", CONTROL_QUEUE_NAME, "--json")
    assert still.returncode == 1 and json.loads(still.stdout)["moved"] == 0
    assert queue_state(victim)[0] == 0 and queue_state(CONTROL_QUEUE_NAME)[0] == 0


def _fill(task: str, origin: str, count: int) -> set[str]:
    messages = [celery_message(task) for _ in range(count)]
    kill_into_dlq(origin, messages)
    return {m[1]["application_headers"]["id"] for m in messages}


def _ids(messages: list) -> Counter[str]:
    return Counter(m.headers["id"] for m in messages)


@pytest.mark.slow
def test_replay_killed_midway_loses_nothing() -> None:
    task, origin = fresh("kill")
    ids = _fill(task, origin, 3000)
    start = queue_state(PARKED_QUEUE_NAME)[0]
    proc = subprocess.Popen(
        [*ENCODEQ, "dlq", "replay", "--task", task, "--to", PARKED_QUEUE_NAME, "--rate", "1500"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: queue_state(PARKED_QUEUE_NAME)[0] >= start + 1200, 60, "the replay to run")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    moved = _ids(of_task(queue_messages(PARKED_QUEUE_NAME), task))
    wait_for(lambda: queue_state("encodeq.dlq")[1] == 0, 30, "the killed consumer to be gone")
    left = _ids(dlq_of_task(task))
    assert set(moved) | set(left) == ids  # nothing lost
    assert 0 < len(left) < len(ids)
    assert max(moved.values()) == 1 and max(left.values()) == 1
    # A message in both places was confirmed but not yet acked: at least once, never lost.
    assert len(set(moved) & set(left)) <= 2000

    report = dlq_json("replay", "--task", task, "--to", PARKED_QUEUE_NAME)
    assert report["moved"] == len(left)
    final = _ids(of_task(queue_messages(PARKED_QUEUE_NAME, consume=True), task))
    assert set(final) == ids and dlq_of_task(task) == []
    assert sum(final.values()) - len(ids) == len(set(moved) & set(left))


def test_ctrl_c_stops_cleanly_with_nothing_lost_or_doubled() -> None:
    task, origin = fresh("sigint")
    ids = _fill(task, origin, 1500)
    start = queue_state(PARKED_QUEUE_NAME)[0]
    proc = subprocess.Popen(
        [
            *ENCODEQ,
            "dlq",
            "replay",
            "--task",
            task,
            "--to",
            PARKED_QUEUE_NAME,
            "--rate",
            "1000",
            "--json",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: queue_state(PARKED_QUEUE_NAME)[0] >= start + 200, 60, "the replay to run")
    proc.send_signal(signal.SIGINT)
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 130, errors
    moved = _ids(of_task(queue_messages(PARKED_QUEUE_NAME, consume=True), task))
    left = _ids(dlq_of_task(task))
    assert not set(moved) & set(left)  # a clean stop acks everything it confirmed
    assert set(moved) | set(left) == ids
    assert max(moved.values()) == 1 and left
    assert '"interrupted": true' in out
