"""``encodeq dlq export|purge|import|history``: lossless round trip, refusals, the audit trail."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from support import (
    celery_message,
    dlq,
    dlq_json,
    dlq_of_task,
    kill_into_dlq,
    origin_queue,
)


def typed_message(task: str) -> tuple[bytes, dict]:
    """Headers of every type py-amqp can tell apart, and a body that is not UTF-8."""
    _, props = celery_message(task)
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
    props.update(priority=3, message_id="m-1", timestamp=1700000000, type="t", app_id="tests",
                 reply_to="r", expiration="600000")  # fmt: skip
    return b"\x00\xffbinary body\x80", {**props, "content_encoding": "binary"}


def snapshot(task: str) -> list[tuple]:
    return [(m.body, m.properties) for m in dlq_of_task(task)]


def test_export_purge_import_round_trip_is_exact(tmp_path: Path) -> None:
    task = f"dlqtest.roundtrip.{uuid.uuid4().hex[:8]}"
    origin = origin_queue(task)
    kill_into_dlq(origin, [typed_message(task), celery_message(task), typed_message(task)])
    before = snapshot(task)
    ids = [r["id"] for r in dlq_json("list", "--task", task)]
    assert len(before) == 3 and len(set(ids)) == 3

    exported = tmp_path / "saved.jsonl"
    assert dlq_json("export", str(exported), "--task", task)["count"] == 3
    assert snapshot(task) == before  # exporting is looking
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [line["id"] for line in lines] == ids

    # Not on a terminal and no --yes: refused, nothing touched.
    refused = dlq("purge", "--task", task)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert snapshot(task) == before

    purge_file = tmp_path / "purged.jsonl"
    report = dlq_json("purge", "--task", task, "--yes", "--export-file", str(purge_file))
    assert report["moved"] == 3 and sorted(report["ids"]) == sorted(ids)
    assert dlq_of_task(task) == []
    assert purge_file.read_text() == exported.read_text()  # the export written first is complete

    imported = dlq_json("import", str(purge_file))
    assert imported["imported"] == 3
    after = snapshot(task)
    assert after == before  # bodies, properties, header values and their types
    for (_, props_after), (_, props_before) in zip(after, before, strict=True):
        for name, value in props_before["application_headers"].items():
            assert type(props_after["application_headers"][name]) is type(value), name
    assert [r["id"] for r in dlq_json("list", "--task", task)] == ids

    history = dlq_json("history")
    purge_entry = next(e for e in reversed(history) if e["action"] == "purge")
    assert sorted(purge_entry["ids"]) == sorted(ids) and "@" in purge_entry["who"]
    assert purge_entry["export"] == str(purge_file)
    assert any(e["action"] == "import" and e["ids"] == ids for e in history)
    assert "purge" in dlq("history").stdout

    assert dlq_json("purge", "--task", task, "--yes", "--no-export")["moved"] == 3
    assert dlq_of_task(task) == []


def test_purge_by_id_touches_only_that_message(tmp_path: Path) -> None:
    task = f"dlqtest.purgeid.{uuid.uuid4().hex[:8]}"
    kill_into_dlq(origin_queue(task), [celery_message(task) for _ in range(3)])
    rows = dlq_json("list", "--task", task)
    out = tmp_path / "one.jsonl"
    report = dlq_json("purge", rows[0]["id"], "--yes", "--export-file", str(out))
    assert report["ids"] == [rows[0]["id"]]
    assert [r["id"] for r in dlq_json("list", "--task", task)] == [r["id"] for r in rows[1:]]
    assert len(out.read_text().splitlines()) == 1
    gone = dlq("purge", rows[0]["id"], "--yes")
    assert gone.returncode == 1 and "no message" in gone.stderr
    assert dlq("purge").returncode == 2  # nothing chosen: a usage error, not "everything"
