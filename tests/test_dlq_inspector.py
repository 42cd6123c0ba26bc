"""``encodeq dlq list|show|stats`` on real deaths from real workers; a replay completes a job.

Deaths of every kind of the failure policy: an upload that is not a video (app failure, with its
failure record), a task name no worker knows and a body that does not decode (malformed, recorded
by the worker's consumer), and a crash loop (a consumer dying with the message, until the quorum
queue's delivery limit dead-letters it).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import amqp
import pytest
from support import (
    broker,
    dlq,
    dlq_json,
    dlq_messages,
    encodeq,
    make_video,
    storage,
    wait_for,
    wait_for_job,
)

from config.topology import WORK_EXCHANGE, declare_topology, work_queue_arguments
from encodeq.storage import UPLOADS, parse_uri


@pytest.fixture(scope="module")
def fleet():
    from support import WorkerFleet

    fleet = WorkerFleet()
    fleet.start("dlq-alpha")
    yield fleet
    fleet.stop_all()


def rows_where(**wanted: str) -> list[dict]:
    return [r for r in dlq_json("list") if all(r.get(k) == v for k, v in wanted.items())]


def upload_garbage(tmp_path: Path) -> str:
    path = tmp_path / "holiday.mp4"
    path.write_bytes(os.urandom(64 * 1024))
    result = encodeq("upload", str(path), "--wait", "--json", "--timeout", "120")
    assert result.returncode == 1, result.stderr[-2000:]
    manifest = json.loads(result.stdout)
    assert manifest["state"] == "failed"
    return manifest["job_id"]


def publish_raw(body: bytes, headers: dict, content_type: str = "application/json") -> None:
    with broker() as conn:
        declare_topology(conn)
        ch = conn.connection.channel()
        message = amqp.Message(
            body, content_type=content_type, content_encoding="utf-8", application_headers=headers
        )
        ch.basic_publish(message, exchange=WORK_EXCHANGE.name, routing_key="control")
        ch.close()


def crash_loop(queue: str, headers: dict) -> None:
    """A consumer that dies holding the message, again and again: what a SIGKILLed worker does."""
    with broker() as conn:
        declare_topology(conn)
        ch = conn.connection.channel()
        ch.queue_declare(queue, durable=True, auto_delete=False, arguments=work_queue_arguments())
        ch.basic_publish(amqp.Message(b"[[], {}, {}]", application_headers=headers), "", queue)
        ch.close()

    def died_again() -> bool:
        with broker() as conn:
            ch = conn.connection.channel()
            got = ch.basic_get(queue, no_ack=False)
            ch.close()  # the consumer "dies": the delivery returns and is counted
        return got is None

    wait_for(died_again, 30, "the delivery limit to dead-letter the message")


def test_every_death_shows_why(fleet, tmp_path: Path) -> None:
    job_id = upload_garbage(tmp_path)
    unknown = f"dlqtest.no_such_task.{uuid.uuid4().hex[:8]}"
    unknown_id, broken_id, looping_id = (str(uuid.uuid4()) for _ in range(3))
    publish_raw(b'[["x"], {}, {}]', {"task": unknown, "id": unknown_id})
    publish_raw(b"\xff\xfe{not json", {"task": "encodeq.probe", "id": broken_id})
    crash_loop(f"dlqtest.crashloop.{uuid.uuid4().hex[:8]}", {"task": "dlqtest.loop",
                                                             "id": looping_id})  # fmt: skip

    def all_dead() -> list[dict] | None:
        rows = {r["key"]: r for r in dlq_json("list")}
        wanted = [unknown_id, broken_id, looping_id]
        job_rows = [r for r in rows.values() if r["job_id"] == job_id]
        if all(k in rows for k in wanted) and job_rows and all(rows[k]["code"] for k in wanted[:2]):
            return [*job_rows, *(rows[k] for k in wanted)]
        return None

    app, unknown_row, broken_row, loop_row = wait_for(all_dead, 60, "every death in the DLQ")
    manifest = wait_for_job(job_id)
    assert app["task"] == "encodeq.probe" and app["reason"] == "rejected"
    assert app["exc_type"] == "InputError" and app["code"] == manifest.error.code
    assert manifest.error.code in app["why"] and "InputError" in app["why"]
    assert unknown_row["code"] == "unknown_task" and unknown in unknown_row["why"]
    assert broken_row["code"] == "undecodable" and "decode" in broken_row["why"]
    assert loop_row["reason"] == "delivery_limit" and "crash loop" in loop_row["why"]

    # Filters.
    assert [r["id"] for r in dlq_json("list", "--job", job_id)] == [app["id"]]
    assert unknown_row["id"] in [r["id"] for r in dlq_json("list", "--error-type", "unknown_task")]
    assert loop_row["id"] in [r["id"] for r in dlq_json("list", "--reason", "delivery_limit")]
    assert dlq_json("list", "--task", unknown, "--older-than", "1h") == []
    assert [r["id"] for r in dlq_json("list", "--task", "dlqtest.no_such_*")] == [unknown_row["id"]]

    shown = dlq_json("show", app["id"])
    assert shown["celery_headers"]["task"] == "encodeq.probe"
    assert shown["args"] == [job_id] and shown["kwargs"] == {}
    assert shown["x_death"][0]["queue"] == "encodeq.control"
    assert shown["x_death"][0]["routing_keys"] == ["control"]
    assert shown["failure"]["code"] == manifest.error.code
    assert "InputError" in shown["failure"]["traceback_tail"]
    assert shown["job"]["state"] == "failed" and shown["replay_target"] == "encodeq -> control"
    human = dlq("show", app["id"])
    assert human.returncode == 0 and "InputError" in human.stdout


def test_looking_changes_nothing(fleet, tmp_path: Path) -> None:
    key = str(uuid.uuid4())
    publish_raw(b'[["y"], {}, {}]', {"task": f"dlqtest.look.{uuid.uuid4().hex}", "id": key})
    wait_for(lambda: any(r["key"] == key for r in dlq_json("list")), 30, "the death")

    def snapshot() -> list[tuple]:
        return [(m.body, m.properties) for m in dlq_messages()]

    before = snapshot()
    rows = dlq_json("list")
    assert len(rows) == len(before)
    assert dlq_json("show", rows[-1]["id"])["id"] == rows[-1]["id"]
    assert dlq_json("stats")
    assert dlq("list").returncode == 0 and dlq("stats").returncode == 0
    export = dlq_json("export", str(tmp_path / "all.jsonl"))
    assert export["count"] == len(before)
    assert snapshot() == before  # same messages, same order, same headers (no delivery count)


def test_stats_groups_one_bug_into_one_line(fleet) -> None:
    task = f"dlqtest.stats.{uuid.uuid4().hex[:8]}"
    keys = [str(uuid.uuid4()) for _ in range(3)]
    for key in keys:
        publish_raw(b"[[], {}, {}]", {"task": task, "id": key})
    wait_for(lambda: len(dlq_json("list", "--task", task)) == 3, 30, "three deaths")
    wait_for(lambda: all(r["code"] for r in dlq_json("list", "--task", task)), 30, "records")
    [group] = dlq_json("stats", "--task", task)
    assert group["count"] == 3 and group["reason"] == "rejected" and group["task"] == task
    assert group["oldest"] <= group["newest"]
    assert task in dlq("stats").stdout


def test_replay_after_fixing_the_source_completes_the_job(fleet, tmp_path: Path) -> None:
    job_id = upload_garbage(tmp_path)
    [row] = wait_for(lambda: dlq_json("list", "--job", job_id), 30, "the death")
    manifest = wait_for_job(job_id)
    _, key = parse_uri(manifest.source.uri)
    video = make_video(tmp_path / "real.mp4", 320, 180, duration=2)
    storage().put_file(UPLOADS, key, video)  # the operator replaces the broken upload

    report = dlq_json("replay", row["id"])
    assert report["moved"] == 1 and report["targets"] == {"encodeq -> control": 1}

    def completed() -> bool:
        from support import jobs

        m = jobs().load(job_id)
        return m is not None and m.state == "completed"

    wait_for(completed, 120, f"job {job_id} to complete after the replay")
    assert dlq_json("list", "--job", job_id) == []
    history = dlq_json("history")
    assert any(e["action"] == "replay" and row["id"] in e["ids"] for e in history)
