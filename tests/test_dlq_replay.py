"""``encodeq dlq replay`` against the real broker: targets, ids, parking, returns, kills, Ctrl-C.

Each test kills its own messages (a task name of its own) in a classic origin queue of its own that
dead-letters into encodeq.dlx, so they reach the shared DLQ with a real ``x-death``; every command
is filtered to that task name or to its ids.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections import Counter

from support import (
    ENCODEQ,
    celery_message,
    dlq,
    dlq_json,
    dlq_of_task,
    kill_into_dlq,
    origin_queue,
    queue_messages,
    queue_state,
    wait_for,
)

from config.topology import PARKED_QUEUE_NAME, REPLAY_COUNT_HEADER


def fresh(prefix: str) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"dlqtest.{prefix}.{tag}", origin_queue(f"dlqtest.{prefix}.{tag}")


def listed(task: str) -> list[dict]:
    return dlq_json("list", "--task", task)


def test_replay_by_id_goes_back_byte_for_byte_while_new_deaths_arrive() -> None:
    task, origin = fresh("byid")
    first = [celery_message(task) for _ in range(3)]
    kill_into_dlq(origin, first)
    rows = listed(task)
    assert len(rows) == 3 and all(r["queue"] == origin and r["reason"] == "rejected" for r in rows)
    chosen = rows[1]
    # New deaths arrive between list and replay: the id still names the same message.
    kill_into_dlq(origin, [celery_message(task) for _ in range(2)])
    assert {r["id"] for r in rows} <= {r["id"] for r in listed(task)}

    report = dlq_json("replay", chosen["id"])
    assert report["ids"] == [chosen["id"]] and report["targets"] == {f"queue {origin}": 1}
    [back] = queue_messages(origin, consume=True)
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
    assert headers["x-death"][0]["queue"] == origin
    remaining = {r["id"] for r in listed(task)}
    assert chosen["id"] not in remaining and len(remaining) == 4

    gone = dlq("replay", chosen["id"])
    assert gone.returncode == 1 and "no message" in gone.stderr and chosen["id"] in gone.stderr
    assert dlq("show", chosen["id"]).returncode == 1


def test_message_replayed_too_often_is_parked_unless_forced() -> None:
    task, origin = fresh("park")
    kill_into_dlq(origin, [celery_message(task)])
    [row] = listed(task)
    env = {"ENCODEQ_DLQ_MAX_REPLAYS": "1"}
    assert dlq_json("replay", row["id"], env=env)["targets"] == {f"queue {origin}": 1}
    # It dies again in the same place: same id, replayed once, x-death count 2.
    [again] = queue_messages(origin)
    _reject_all(origin)
    [row2] = listed(task)
    assert row2["id"] == row["id"] and row2["replays"] == 1

    plan = dlq_json("replay", row["id"], "--dry-run", env=env)
    assert plan["parked"] == [row["id"]]
    report = dlq_json("replay", row["id"], env=env)
    assert report["targets"] == {"parked": 1}
    assert listed(task) == [] and queue_messages(origin) == []
    [parked] = [m for m in queue_messages(PARKED_QUEUE_NAME) if m.headers.get("task") == task]
    assert parked.headers[REPLAY_COUNT_HEADER] == 1 and parked.body == again.body

    forced = dlq_json("replay", row["id"], "--queue", PARKED_QUEUE_NAME, "--force", env=env)
    assert forced["targets"] == {f"queue {origin}": 1}
    [back] = queue_messages(origin, consume=True)
    assert back.headers[REPLAY_COUNT_HEADER] == 2


def _reject_all(queue: str) -> None:
    from support import broker

    with broker() as conn:
        ch = conn.channel()
        while (m := ch.basic_get(queue, no_ack=False)) is not None:
            ch.basic_reject(m.delivery_tag, requeue=False)
        ch.close()


def test_unroutable_target_keeps_the_message_and_dry_run_says_so() -> None:
    task, origin = fresh("unroutable")
    expired = celery_message(task, expires="2001-01-01T00:00:00+00:00")
    kill_into_dlq(origin, [celery_message(task), expired])
    rows = listed(task)
    before = [(m.body, m.headers) for m in dlq_of_task(task)]
    missing = f"dlqtest.nowhere.{uuid.uuid4().hex[:8]}"

    plan = dlq_json("replay", "--task", task, "--to", missing, "--dry-run")
    assert plan["messages"] == 2
    assert plan["targets"] == {f"queue {missing}": 2}
    assert plan["missing_targets"] == {f"queue {missing}": 2}
    expired_id = next(r["id"] for r in rows if r["key"] == expired[1]["application_headers"]["id"])
    assert plan["expired"] == [expired_id]
    assert dlq_json("replay", "--task", task, "--dry-run")["targets"] == {f"queue {origin}": 2}

    result = dlq("replay", "--task", task, "--to", missing, "--json")
    assert result.returncode == 1
    assert "unroutable" in result.stdout
    assert [(m.body, m.headers) for m in dlq_of_task(task)] == before  # kept, in order


def _fill(task: str, origin: str, count: int) -> set[str]:
    messages = [celery_message(task) for _ in range(count)]
    kill_into_dlq(origin, messages)
    return {m[1]["application_headers"]["id"] for m in messages}


def _ids(messages: list) -> Counter[str]:
    return Counter(m.headers["id"] for m in messages)


def test_replay_killed_midway_loses_nothing() -> None:
    task, origin = fresh("kill")
    side = origin_queue(f"dlqtest.side.{uuid.uuid4().hex[:8]}")
    ids = _fill(task, origin, 3000)
    proc = subprocess.Popen(
        [*ENCODEQ, "dlq", "replay", "--task", task, "--to", side, "--rate", "1500"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: queue_state(side)[0] >= 1200, 60, "the replay to be under way")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    moved = _ids(queue_messages(side))
    wait_for(lambda: queue_state("encodeq.dlq")[1] == 0, 30, "the killed consumer to be gone")
    left = _ids(dlq_of_task(task))
    assert set(moved) | set(left) == ids  # nothing lost
    assert 0 < len(left) < len(ids)
    assert max(moved.values()) == 1 and max(left.values()) == 1
    # A message in both places was confirmed but not yet acked: at least once, never lost.
    assert len(set(moved) & set(left)) <= 2000

    assert dlq_json("replay", "--task", task, "--to", side)["moved"] == len(left)
    final = _ids(queue_messages(side, consume=True))
    assert set(final) == ids and dlq_of_task(task) == []
    assert sum(final.values()) - len(ids) == len(set(moved) & set(left))


def test_ctrl_c_stops_cleanly_with_nothing_lost_or_doubled() -> None:
    task, origin = fresh("sigint")
    side = origin_queue(f"dlqtest.side.{uuid.uuid4().hex[:8]}")
    ids = _fill(task, origin, 1500)
    proc = subprocess.Popen(
        [*ENCODEQ, "dlq", "replay", "--task", task, "--to", side, "--rate", "1000", "--json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: queue_state(side)[0] >= 200, 60, "the replay to be under way")
    proc.send_signal(signal.SIGINT)
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 130, errors
    moved = _ids(queue_messages(side, consume=True))
    left = _ids(dlq_of_task(task))
    assert not set(moved) & set(left)  # a clean stop acks everything it confirmed
    assert set(moved) | set(left) == ids
    assert max(moved.values()) == 1 and left
    assert '"interrupted": true' in out
