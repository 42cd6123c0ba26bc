"""Benchmark: ``encodeq dlq replay --all --to encodeq.dlq.parked`` against a naive get/publish/ack
loop.

Runs on a vhost of its own (created and deleted here, with ``rabbitmqctl``) and an embedded S3
server (the audit trail needs one). It fills the DLQ with N real dead letters (Celery-shaped
messages that expire in an origin queue, so RabbitMQ writes their ``x-death``), times the CLI
replaying them to the parked queue (a classic queue with no consumer; ``--to`` names only the work
queues or the parked queue), checks every message arrived exactly once and the DLQ is empty, then
refills the DLQ and times the naive loop (basic_get, publish and wait for its confirm, basic_ack,
one message at a time, to the same queue) on the same machine in the same run, and prints the
ratio. Every replayed message goes through the replay's checks (target, CC/BCC, user_id).

    python bench/bench_dlq_replay.py [--messages 10000] [--naive-messages 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import amqp
from kombu import Connection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the suite's helpers: one stack, one queue-depth helper

from support.broker import queue_state  # noqa: E402
from support.stack import isolated_stack  # noqa: E402

from config.topology import (  # noqa: E402
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE_NAME,
    PARKED_QUEUE_NAME,
)

ORIGIN = "bench.origin"
TARGET = PARKED_QUEUE_NAME


def fill(url: str, count: int) -> set[str]:
    """``count`` Celery-shaped messages, dead-lettered (expired) into the DLQ; their task ids."""
    ids: set[str] = set()
    with Connection(url) as conn:
        conn.ensure_connection()
        from config.topology import declare_topology

        declare_topology(conn)
        raw = conn.connection
        ch = raw.channel()
        ch.queue_declare(
            ORIGIN,
            durable=True,
            auto_delete=False,
            arguments={"x-message-ttl": 0, "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name},
        )
        for i in range(count):
            task_id = str(uuid.uuid4())
            ids.add(task_id)
            job = uuid.uuid4().hex
            body = json.dumps(
                [[job, "360p"], {}, {"callbacks": None, "errbacks": None, "chain": None}]
            ).encode()
            headers = {
                "lang": "py",
                "task": "encodeq.encode",
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "retries": 0,
                "argsrepr": f"('{job}', '360p')",
                "kwargsrepr": "{}",
                "origin": f"bench@{i}",
            }
            msg = amqp.Message(
                body,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                correlation_id=task_id,
                application_headers=headers,
            )
            ch.basic_publish(msg, exchange="", routing_key=ORIGIN)
        ch.close()
    wait_count(url, DEAD_LETTER_QUEUE_NAME, count)
    return ids


def queue_count(url: str, queue: str) -> int:
    return queue_state(queue, url)[0]


def wait_count(url: str, queue: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while queue_count(url, queue) != count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{queue} never reached {count} (has {queue_count(url, queue)})")
        time.sleep(0.1)


def drain_ids(url: str, queue: str) -> list[str]:
    """Consume (and remove) every message of ``queue``; their task ids."""
    found: list[str] = []
    expected = queue_count(url, queue)
    with Connection(url) as conn:
        raw = conn.connection
        ch = raw.channel()
        ch.basic_qos(0, 0, False)
        ch.basic_consume(queue, no_ack=True, callback=lambda m: found.append(m.headers["id"]))
        while len(found) < expected:
            raw.drain_events(timeout=5)
        ch.close()
    return found


def naive(url: str, count: int) -> float:
    """One at a time: get, publish and wait for the confirm, ack. Returns seconds."""
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        conn.ensure_connection()
        raw = conn.connection
        ch = raw.channel()
        ch.confirm_select()
        started = time.perf_counter()
        moved = 0
        while moved < count:
            m = ch.basic_get(DEAD_LETTER_QUEUE_NAME, no_ack=False)
            if m is None:
                break
            props: dict[str, Any] = dict(m.properties)
            headers = dict(props.pop("application_headers", None) or {})
            headers["encodeq-replay-count"] = int(headers.get("encodeq-replay-count", 0)) + 1
            out = amqp.Message(m.body, application_headers=headers, **props)
            ch.basic_publish_confirm(out, exchange="", routing_key=TARGET, mandatory=True)
            ch.basic_ack(m.delivery_tag)
            moved += 1
        elapsed = time.perf_counter() - started
        ch.close()
    if moved != count:
        raise SystemExit(f"naive loop moved {moved} of {count}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--naive-messages", type=int, default=2_000)
    args = parser.parse_args()

    with isolated_stack("bench") as stack:
        url = stack["ENCODEQ_BROKER_URL"]
        env = {
            **os.environ,
            "ENCODEQ_BUCKET_PREFIX": "bench-",
            # This working tree's code, whatever checkout the editable install points at.
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
        }
        return measure(url, env, args.messages, args.naive_messages)


def measure(url: str, env: dict[str, str], messages: int, naive_messages: int) -> int:
    """Replay ``messages`` dead letters with the CLI, then ``naive_messages`` the naive way."""
    ids = fill(url, messages)
    cli = [shutil.which("encodeq") or "encodeq", "dlq", "replay", "--all", "--to", TARGET]
    started = time.perf_counter()
    result = subprocess.run([*cli, "--json"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"replay failed ({result.returncode}):\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout)
    moved = drain_ids(url, TARGET)
    left = queue_count(url, DEAD_LETTER_QUEUE_NAME)
    lost = len(ids - set(moved))
    duplicated = len(moved) - len(set(moved))
    ok = lost == 0 and duplicated == 0 and left == 0 and report["moved"] == messages

    fill(url, naive_messages)
    naive_s = naive(url, naive_messages)
    naive_moved = queue_count(url, TARGET)

    engine_rate = messages / report["seconds"]
    wall_rate = messages / wall
    naive_rate = naive_messages / naive_s
    print(f"{'':34} {'messages':>9} {'seconds':>8} {'msg/s':>9}")
    print(
        f"{'replay --all (engine)':34} {messages:>9} {report['seconds']:>8.2f} {engine_rate:>9.0f}"
    )
    print(f"{'replay --all (CLI wall, w/ start)':34} {messages:>9} {wall:>8.2f} {wall_rate:>9.0f}")
    print(
        f"{'naive get/publish+confirm/ack':34} {naive_messages:>9} {naive_s:>8.2f} "
        f"{naive_rate:>9.0f}"
    )
    print(
        f"ratio engine/naive: {engine_rate / naive_rate:.1f}x   "
        f"ratio CLI wall/naive: {wall_rate / naive_rate:.1f}x"
    )
    print(
        f"check: replayed {report['moved']}, arrived {len(moved)}, lost {lost}, "
        f"duplicated {duplicated}, left in DLQ {left}, naive moved {naive_moved}: "
        f"{'OK' if ok and naive_moved == naive_messages else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
