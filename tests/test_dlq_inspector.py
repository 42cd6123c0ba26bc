"""``encodeq dlq list|show|stats`` on real deaths from real workers; a replay completes a job.

Deaths of every kind of the failure policy: an upload that is not a video (app failure, with its
failure record), a task name no worker knows and a body that does not decode (malformed, recorded
by the worker's consumer), and a crash loop (a consumer dying with the message, until the quorum
queue's delivery limit dead-letters it). And what a message must not be able to do through a
worker: name a storage key with its task id (forging the audit trail), or command the worker
through Celery's remote control (off unless Flower is deployed).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

import amqp
import pytest
from support.broker import broker, list_queues
from support.commands import dlq, dlq_json, encodeq
from support.dlq import dlq_messages
from support.media import make_video
from support.storage import storage, wait_for_job
from support.waiting import wait_for

from config.topology import (
    DEAD_LETTER_QUEUE_NAME,
    WORK_EXCHANGE,
    declare_topology,
    work_queue_arguments,
)
from core.failures import load_failure
from core.layout import AUDIT, FAILURES, UPLOADS, failure_record_key
from core.storage import parse_uri
from dlq_inspector.audit import ACTIONS


@pytest.fixture(scope="module")
def fleet():
    from support.fleet import WorkerFleet

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


@pytest.mark.slow
def test_every_death_shows_why(fleet, tmp_path: Path) -> None:
    job_id = upload_garbage(tmp_path)
    unknown = f"dlqtest.no_such_task.{uuid.uuid4().hex[:8]}"
    unknown_id, broken_id, looping_id = (str(uuid.uuid4()) for _ in range(3))
    publish_raw(b'[["x"], {}, {}]', {"task": unknown, "id": unknown_id})
    publish_raw(b"\xff\xfe{not json", {"task": "encodeq.probe", "id": broken_id})
    crash_loop(
        f"dlqtest.crashloop.{uuid.uuid4().hex[:8]}", {"task": "dlqtest.loop", "id": looping_id}
    )

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
        from support.storage import jobs

        m = jobs().load(job_id)
        return m is not None and m.state == "completed"

    wait_for(completed, 120, f"job {job_id} to complete after the replay")
    assert dlq_json("list", "--job", job_id) == []
    history = dlq_json("history")
    assert any(e["action"] == "replay" and row["id"] in e["ids"] for e in history)


# --- what a message must not be able to do through a worker ------------------------------------
@pytest.mark.slow
def test_a_task_id_never_becomes_a_storage_key(fleet) -> None:
    """Failure records are keyed by a digest of the task id: ids shaped like paths into the audit
    trail, or longer than an S3 key may be, still get their record, and the history shows only
    what operators did."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
    shapes = [
        lambda tag: f"../audit/{stamp}-{tag}",
        lambda tag: f"audit/{stamp}-{tag}",
        lambda tag: f"a/b/../../audit/{stamp}-{tag}",
        lambda tag: f"/{tag}/../audit",
        lambda tag: f"..%2faudit%2f{tag}",
        lambda tag: f"{tag}/" + "x" * rng.randint(1100, 3000),  # past S3's 1024-byte key limit
        lambda tag: f"\u00fc/{tag}/\u202e.json",
    ]
    history_before = dlq_json("history")
    audit_before = set(storage().list_keys(AUDIT))
    # Both places a worker writes records from: a task that fails, a message it cannot run.
    unknown = f"dlqtest.crafted.{uuid.uuid4().hex[:8]}"
    bodies = {"encodeq.probe": b"[[1, 2, 3], {}, {}]", unknown: b'[["x"], {}, {}]'}
    crafted = {}
    for shape in shapes:
        task_id = shape(uuid.uuid4().hex[:8])
        task = rng.choice(sorted(bodies))
        crafted[task_id] = task
        publish_raw(bodies[task], {"task": task, "id": task_id})

    def recorded() -> dict | None:
        found = {i: load_failure(storage(), i) for i in crafted}
        return found if all(found.values()) else None

    records = wait_for(recorded, 60, "a failure record for every crafted id")
    for task_id, record in records.items():
        assert record.task_id == task_id and record.task == crafted[task_id]
        assert record.code in ("bad_arguments", "unknown_task"), record
    keys = set(storage().list_keys(FAILURES))
    assert all(re.fullmatch(r"[0-9a-f]{64}\.json", key) for key in keys), keys
    assert {failure_record_key(i) for i in crafted} <= keys
    assert set(storage().list_keys(AUDIT)) == audit_before
    history = dlq_json("history")
    assert history == history_before and all(e["action"] in ACTIONS for e in history)
    rows = {r["key"]: r for r in dlq_json("list") if r["key"] in crafted}
    assert set(rows) == set(crafted) and all(r["code"] == records[k].code for k, r in rows.items())
    for row in rows.values():
        dlq_json("purge", row["id"], "--yes", "--no-export")


def pidbox_consumers(node: str) -> int:
    """Consumers of a worker's remote-control queue (0 when there is none). The queue is
    exclusive to the worker's connection, so only the broker's own listing sees it."""
    counts = dict(list_queues("name", "consumers"))
    return int(counts.get(f"{node}.celery.pidbox", 0))


def _ran_a_message() -> str:
    """Publish a message only a worker can dead-letter, and wait for its failure record: once a
    worker has run one, all of its start-up steps (remote control's included) have run."""
    key = str(uuid.uuid4())
    publish_raw(b"[[], {}, {}]", {"task": f"dlqtest.rc.{uuid.uuid4().hex[:8]}", "id": key})
    wait_for(lambda: load_failure(storage(), key), 60, "a worker to run a message")
    return key


@pytest.mark.slow
def test_workers_take_no_remote_control_unless_told(fleet, workers) -> None:
    """A worker has no ``celery.pidbox`` consumer, so a shutdown broadcast (or a dead letter
    claiming to come from a pidbox queue) cannot stop it; ENCODEQ_REMOTE_CONTROL=1 turns remote
    control on for Flower. And the inspector will not replay into a pidbox queue."""
    from worker.app import app as celery_app

    host = socket.gethostname()
    alpha = f"dlq-alpha@{host}"
    _ran_a_message()
    assert pidbox_consumers(alpha) == 0

    controlled = workers.start("dlq-rc", env={"ENCODEQ_REMOTE_CONTROL": "1"})
    rc_node = f"dlq-rc@{host}"
    pidbox = f"{rc_node}.celery.pidbox"
    wait_for(lambda: pidbox_consumers(rc_node) == 1, 60, "the remote-controlled worker's pidbox")

    # The attack: a dead letter whose x-death says it died in that worker's pidbox queue.
    command = {"method": "shutdown", "arguments": {}, "destination": None}
    now = datetime.now(UTC).replace(tzinfo=None)
    death = {"count": 1, "reason": "rejected", "queue": pidbox, "exchange": ""}
    death.update({"routing-keys": [pidbox], "time": now})
    with broker() as conn:
        ch = conn.connection.channel()
        ch.confirm_select()
        headers = {"x-death": [death]}
        body = json.dumps(command).encode()
        message = amqp.Message(body, content_type="application/json", application_headers=headers)
        ch.basic_publish_confirm(message, "", DEAD_LETTER_QUEUE_NAME, mandatory=True)
        ch.close()
    [row] = [r for r in dlq_json("list") if r["queue"] == pidbox]
    result = dlq("replay", row["id"], "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["moved"] == 0 and "not a work queue" in report["failed"][0]["why"]
    assert [r["id"] for r in dlq_json("list") if r["queue"] == pidbox] == [row["id"]]
    assert controlled.proc.poll() is None  # nothing was sent to it

    # Remote control itself: only the worker that has it obeys.
    celery_app.control.shutdown(destination=[alpha, rc_node])
    wait_for(lambda: controlled.proc.poll() is not None, 60, "the remote-controlled worker to stop")
    _ran_a_message()  # alpha took no command: it still runs messages
    assert fleet.workers[0].proc.poll() is None
    dlq_json("purge", row["id"], "--yes", "--no-export")
