"""``encodeq dlq export|purge|import|history``: lossless round trip, refusals, the audit trail.

The module runs on a RabbitMQ vhost of its own (its work queues hold nobody else's messages), so
messages die in the real work queues, as a worker's reject leaves them, and a test can tell
exactly what an import published. Each test keeps to the messages of one job id of its own.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import random
import stat
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from support.broker import private_vhost, queue_state
from support.commands import dlq, dlq_json
from support.dlq import celery_message, dlq_for, kill_in_work_queue

from config.topology import (
    CONTROL_QUEUE_NAME,
    DEAD_LETTER_QUEUE_NAME,
    ENCODE_QUEUE_NAME,
    PARKED_QUEUE_NAME,
    REPLAY_COUNT_HEADER,
)

TASK = "encodeq.probe"


@pytest.fixture(scope="module", autouse=True)
def own_broker() -> Iterator[str]:
    with private_vhost("purge") as url:
        yield url


def typed_message(job: str) -> tuple[bytes, dict]:
    """Headers of every type py-amqp can tell apart, and every basic property."""
    body, props = celery_message(TASK, job=job)
    props["application_headers"].update(
        {
            "an-int": 7,
            "a-big-int": 2**40,
            "a-negative": -3,
            "a-float": 1.5,
            "a-bool": True,
            "a-null": None,
            "raw-bytes": b"\xff\x00\xfe",
            "a-decimal": Decimal("12.50"),
            "a-time": datetime(2024, 2, 29, 12, 30, 15),
            "a-table": {"nested": [1, "two", {"$bytes": "not a tag"}]},
            "an-array": [1, 2.5, "three", False],
        }
    )
    props.update(
        priority=3,
        message_id="m-1",
        timestamp=1700000000,
        type="t",
        app_id="tests",
        reply_to="r",
        expiration="600000",
    )
    return body, props


def snapshot(job: str) -> list[tuple]:
    return [(m.body, m.properties) for m in dlq_for(job_id=job)]


@pytest.mark.slow  # the default suite's time budget
def test_export_purge_import_round_trip_is_exact(tmp_path: Path) -> None:
    job = uuid.uuid4().hex
    messages = [typed_message(job), celery_message(TASK, job=job), typed_message(job)]
    kill_in_work_queue("encode", messages)
    before = snapshot(job)
    ids = [r["id"] for r in dlq_json("list", "--job", job)]
    assert len(before) == 3 and len(set(ids)) == 3

    exported = tmp_path / "saved.jsonl"
    assert dlq_json("export", str(exported), "--job", job)["count"] == 3
    assert snapshot(job) == before  # exporting is looking
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [line["id"] for line in lines] == ids

    # Not on a terminal and no --yes: refused, nothing touched.
    refused = dlq("purge", "--job", job)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert snapshot(job) == before

    purge_file = tmp_path / "purged.jsonl"
    report = dlq_json("purge", "--job", job, "--yes", "--export-file", str(purge_file))
    assert report["moved"] == 3 and sorted(report["ids"]) == sorted(ids)
    assert dlq_for(job_id=job) == []
    assert purge_file.read_text() == exported.read_text()  # the export written first is complete

    imported = dlq_json("import", str(purge_file))
    assert imported["imported"] == 3 and imported["result"] == "imported"
    after = snapshot(job)
    assert after == before  # bodies, properties, header values and their types
    for (_, props_after), (_, props_before) in zip(after, before, strict=True):
        for name, value in props_before["application_headers"].items():
            assert type(props_after["application_headers"][name]) is type(value), name
    assert [r["id"] for r in dlq_json("list", "--job", job)] == ids

    history = dlq_json("history")
    purge_entry = next(e for e in reversed(history) if e["action"] == "purge")
    assert sorted(purge_entry["ids"]) == sorted(ids) and "@" in purge_entry["who"]
    assert purge_entry["export"] == str(purge_file)
    assert any(e["action"] == "import" and e["ids"] == ids for e in history)
    assert "purge" in dlq("history").stdout

    assert dlq_json("purge", "--job", job, "--yes", "--no-export")["moved"] == 3
    assert dlq_for(job_id=job) == []


def test_purge_by_id_touches_only_that_message(tmp_path: Path) -> None:
    job = uuid.uuid4().hex
    kill_in_work_queue("control", [celery_message(TASK, job=job) for _ in range(3)])
    rows = dlq_json("list", "--job", job)
    out = tmp_path / "one.jsonl"
    report = dlq_json("purge", rows[0]["id"], "--yes", "--export-file", str(out))
    assert report["ids"] == [rows[0]["id"]]
    assert [r["id"] for r in dlq_json("list", "--job", job)] == [r["id"] for r in rows[1:]]
    assert len(out.read_text().splitlines()) == 1
    gone = dlq("purge", rows[0]["id"], "--yes")
    assert gone.returncode == 1 and "no message" in gone.stderr
    assert dlq("purge").returncode == 2  # nothing chosen: a usage error, not "everything"
    dlq_json("purge", "--job", job, "--yes", "--no-export")


# --- import: every line checked before anything is published -------------------------------------
Line = dict[str, Any]


def _death(line: Line, queue: str, exchange: str, key: str) -> None:
    death = line["headers"]["x-death"][0]
    death.update({"queue": queue, "exchange": exchange, "routing-keys": [key]})
    line["headers"]["x-first-death-queue"] = queue
    line["headers"]["x-first-death-exchange"] = exchange


def _body(line: Line, body: bytes) -> None:
    line["body"] = base64.b64encode(body).decode()


def _pickle(line: Line) -> None:
    _body(line, pickle.dumps(([1], {}, {})))
    line["properties"]["content_type"] = "application/x-python-serialize"


def _nest(levels: int) -> Any:
    value: Any = "deep"
    for _ in range(levels):
        value = {"in": value}
    return value


#: name -> (how a good export line is spoiled, what the refusal must say)
SPOILERS: dict[str, tuple[Callable[[Line], None], str]] = {
    "x-death to a worker's pidbox queue": (
        lambda d: _death(d, "celery@h.celery.pidbox", "", "celery@h.celery.pidbox"),
        "queue celery@h.celery.pidbox is not a work queue",
    ),
    "x-death to the pidbox exchange": (
        lambda d: _death(d, "celery@h.celery.pidbox", "celery.pidbox", ""),
        "celery.pidbox -> (no routing key) is not a work queue",
    ),
    "x-death to amq.rabbitmq.reply-to": (
        lambda d: _death(d, "amq.rabbitmq.reply-to", "", "amq.rabbitmq.reply-to"),
        "queue amq.rabbitmq.reply-to is not a work queue",
    ),
    "x-death to a reply queue": (
        lambda d: _death(d, "abc.reply.celery.pidbox", "reply.celery.pidbox", "abc"),
        "reply.celery.pidbox -> abc is not a work queue",
    ),
    "x-death through amq.direct": (
        lambda d: _death(d, CONTROL_QUEUE_NAME, "amq.direct", "control"),
        "amq.direct -> control is not a work queue",
    ),
    "unknown task": (lambda d: d["headers"].update(task="celery.ping"), "'celery.ping' is not a"),
    "no task": (lambda d: d["headers"].pop("task"), "no task header"),
    "pickle": (
        _pickle,
        "content type 'application/x-python-serialize'",
    ),
    "no content type": (lambda d: d["properties"].pop("content_type"), "content type None"),
    "latin-1": (lambda d: d["properties"].update(content_encoding="latin-1"), "encoding"),
    "binary body": (lambda d: _body(d, b"\x00\xffbinary\x80"), "the body is not JSON"),
    "protocol 1 body": (
        lambda d: _body(d, json.dumps({"task": TASK, "args": []}).encode()),
        "not a Celery task message",
    ),
    "unknown embed": (
        lambda d: _body(d, json.dumps([[], {}, {"link": 1}]).encode()),
        "unknown keys ['link']",
    ),
    "user_id": (lambda d: d["properties"].update(user_id="admin"), "user_id"),
    "delivery_mode 3": (lambda d: d["properties"].update(delivery_mode=3), "delivery_mode 3"),
    "delivery_mode text": (lambda d: d["properties"].update(delivery_mode="2"), "delivery_mode"),
    "priority 256": (lambda d: d["properties"].update(priority=256), "priority 256"),
    "priority -1": (lambda d: d["properties"].update(priority=-1), "priority -1"),
    "expiration number": (lambda d: d["properties"].update(expiration=60000), "expiration"),
    "expiration -5": (lambda d: d["properties"].update(expiration="-5"), "expiration '-5'"),
    "timestamp text": (lambda d: d["properties"].update(timestamp="now"), "timestamp 'now'"),
    "long correlation id": (
        lambda d: d["properties"].update(correlation_id="c" * 300),
        "correlation_id",
    ),
    "CC": (lambda d: d["headers"].update(CC=["celery@h.celery.pidbox"]), "a CC header"),
    "BCC": (lambda d: d["headers"].update(BCC=["celery@h.celery.pidbox"]), "a BCC header"),
    "huge header": (lambda d: d["headers"].update(argsrepr="x" * 40_000), "bytes of properties"),
    "many headers": (
        lambda d: d["headers"].update({f"h{i}": i for i in range(80)}),
        "headers (at most",
    ),
    "deep header": (lambda d: d["headers"].update(deep=_nest(12)), "nest deeper"),
    "long task id": (lambda d: d["headers"].update(id="i" * 300), "not a task id"),
    "replay count text": (
        lambda d: d["headers"].update({REPLAY_COUNT_HEADER: "1"}),
        f"{REPLAY_COUNT_HEADER} '1'",
    ),
    "unknown property": (lambda d: d["properties"].update(colour="red"), "unknown properties"),
    "bad base64": (lambda d: d.update(body="%%%"), "not an export line"),
}
#: Lines that are not even export lines.
NOT_LINES = {"not JSON": ("{not json", "not JSON"), "an array": ("[1, 2]", "not an export line")}


def _good_lines(job: str, tmp_path: Path, count: int) -> list[str]:
    """Export lines of real dead letters (died in a work queue), then purged from the DLQ."""
    kill_in_work_queue("control", [celery_message(TASK, job=job) for _ in range(count)])
    saved = tmp_path / f"{job}.jsonl"
    assert dlq_json("export", str(saved), "--job", job)["count"] == count
    dlq_json("purge", "--job", job, "--yes", "--no-export")
    return saved.read_text().splitlines()


def _spoiled(template: str, name: str) -> str:
    line = json.loads(template)
    line["headers"]["id"] = str(uuid.uuid4())  # a message of its own, were it published
    SPOILERS[name][0](line)
    return json.dumps(line)


def _nothing_published() -> dict[str, int]:
    queues = (DEAD_LETTER_QUEUE_NAME, CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME, PARKED_QUEUE_NAME)
    return {q: queue_state(q)[0] for q in queues}


@pytest.mark.slow
def test_import_checks_every_line_first_and_publishes_nothing_when_one_is_bad(
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    job = uuid.uuid4().hex
    good = _good_lines(job, tmp_path, rng.randint(2, 5))
    queues = _nothing_published()

    # Every kind of bad line at once, between good ones, in a random order: each is reported
    # with its line number and reason; nothing at all is published.
    entries = [(line, None) for line in good]
    entries += [(_spoiled(rng.choice(good), name), why) for name, (_, why) in SPOILERS.items()]
    entries += list(NOT_LINES.values())
    rng.shuffle(entries)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(line + "\n" for line, _ in entries))
    expected = {n: why for n, (_, why) in enumerate(entries, 1) if why is not None}

    result = dlq("import", str(mixed), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["result"] == "refused" and report["imported"] == 0 and report["ids"] == []
    reported = {b["line"]: b["reason"] for b in report["bad_lines"]}
    assert set(reported) == set(expected)
    for number, why in expected.items():
        assert why in reported[number], (number, why, reported[number])
    assert _nothing_published() == queues and dlq_for(job_id=job) == []
    entry = dlq_json("history")[-1]
    assert entry["action"] == "import" and entry["result"] == "refused"
    assert entry["file"] == str(mixed) and entry["count"] == 0
    assert sorted(b["line"] for b in entry["bad_lines"]) == sorted(expected)

    # One bad line among good ones is enough; the plain output names it.
    name = rng.choice(sorted(SPOILERS))
    lines = list(good)
    at = rng.randint(0, len(lines))
    lines.insert(at, _spoiled(good[0], name))
    one_bad = tmp_path / "one-bad.jsonl"
    one_bad.write_text("\n".join(lines) + "\n")
    refused = dlq("import", str(one_bad))
    assert refused.returncode == 1
    assert f"line {at + 1}:" in refused.stderr and SPOILERS[name][1] in refused.stderr, name
    assert "nothing was imported" in refused.stderr
    assert _nothing_published() == queues and dlq_for(job_id=job) == []
    entry = dlq_json("history")[-1]
    assert entry["result"] == "refused" and [b["line"] for b in entry["bad_lines"]] == [at + 1]

    missing = dlq("import", str(tmp_path / "nowhere.jsonl"))
    assert missing.returncode == 1 and dlq_json("history")[-1]["result"] == "refused"

    # The good lines alone go in, and that is audited too.
    only_good = tmp_path / "good.jsonl"
    only_good.write_text("\n".join(good) + "\n")
    imported = dlq_json("import", str(only_good))
    assert imported["imported"] == len(good) and len(dlq_for(job_id=job)) == len(good)
    entry = dlq_json("history")[-1]
    assert entry["result"] == "imported" and entry["ids"] == imported["ids"]
    dlq_json("purge", "--job", job, "--yes", "--no-export")


# --- exports are private files --------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_exports_are_private_files(tmp_path: Path) -> None:
    """A purge's export goes to the private folder by default; every export file is 0600, even
    under a permissive umask and over an existing file that was readable by others."""
    job = uuid.uuid4().hex
    work = tmp_path / "work"
    env = {"ENCODEQ_WORK_DIR": str(work)}
    previous = os.umask(0)
    try:
        kill_in_work_queue("control", [celery_message(TASK, job=job) for _ in range(2)])
        report = dlq_json("purge", "--job", job, "--yes", env=env)
        export = Path(report["export"])
        assert export.parent == work / "dlq-exports"
        assert _mode(export.parent) == 0o700 and _mode(export) == 0o600
        assert len(export.read_text().splitlines()) == 2

        kill_in_work_queue("control", [celery_message(TASK, job=job)])
        existing = tmp_path / "mine.jsonl"
        existing.write_text("")
        existing.chmod(0o644)
        assert dlq_json("export", str(existing), "--job", job)["count"] == 1
        assert _mode(existing) == 0o600 and len(existing.read_text().splitlines()) == 1
        chosen = tmp_path / "chosen.jsonl"
        dlq_json("purge", "--job", job, "--yes", "--export-file", str(chosen))
        assert _mode(chosen) == 0o600 and len(chosen.read_text().splitlines()) == 1
    finally:
        os.umask(previous)
