"""The meters of bench_capacity.py: what one job costs in S3 requests, broker messages and CPU.

Everything here counts, none of it times: counts and CPU-seconds do not depend on how busy the
machine is (wall-clock times do, by 2x when the test suite runs beside a bench).

* ``S3Meter``: WSGI middleware around the embedded S3 server (moto): every request by verb (GET,
  PUT, HEAD, LIST, DELETE, POST, BUCKET), by what it touches (the job document, a rendition
  record, a segment...: ``area_of``), the bytes each way, and the CPU moto spent on it.
* ``BusMeter``: a thread subscribed to ``#`` on ``encodeq.events`` (the project's events) and on
  ``celeryev`` (Celery's task events and heartbeats, which workers publish as well).
* ``tree_cpu``: user+sys of process trees from /proc, dead children included (see there).

All of them read as one flat ``{metric: number}`` dict, so a job's cost is ``after - before``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from support.broker import rabbitmqctl

Metrics = dict[str, float]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Celery's event exchange (task-sent/received/started/succeeded, worker-heartbeat).
CELERY_EVENTS = "celeryev"


def diff(after: Metrics, before: Metrics) -> Metrics:
    """What happened between two readings (metrics that did not move are left out)."""
    out = {k: round(v - before.get(k, 0.0), 6) for k, v in after.items()}
    return {k: v for k, v in out.items() if v}


# --- S3 ------------------------------------------------------------------------------------------
def area_of(bucket: str, key: str) -> str:
    """What an object is, by the layout (core/layout.py): ``jobs.manifest`` is the job document,
    ``jobs.*`` the other small JSON records, the rest the media."""
    name = key.rsplit("/", 1)[-1]
    if bucket == "jobs":
        if name == "manifest.json":
            return "jobs.manifest"
        if name.endswith(".live.json"):
            return "jobs.live_record"
        part = key.split("/")[1] if key.count("/") >= 2 else ""
        return {"renditions": "jobs.rendition_record", "chunks": "jobs.chunk_record"}.get(
            part, "jobs.other"
        )
    if bucket == "uploads":
        return "uploads.chunk_output" if "/chunks/" in key else "uploads.source"
    if bucket == "renditions":
        suffix = name.rsplit(".", 1)[-1]
        return {"ts": "renditions.segment", "m3u8": "renditions.playlist"}.get(
            suffix, "renditions.other"
        )
    return f"{bucket}.object"


def request_kind(method: str, path: str, query: str, logical: Callable[[str], str]) -> str:
    """``VERB.area`` of one S3 request (path style, as the minio SDK sends to an IP endpoint).
    Multipart parts count as PUT, their start and completion as POST: S3 bills them so."""
    params = parse_qs(query, keep_blank_values=True)
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return "BUCKET.service"
    area = logical(bucket)
    if not key:
        if "delete" in params:
            return f"DELETE.{area}.batch"
        if method == "GET" and "location" not in params:
            return f"LIST.{area}"
        return f"BUCKET.{area}"
    verb = "POST" if method == "POST" else method
    return f"{verb}.{area_of(area, key)}"


class S3Meter:
    """Counts every request the embedded S3 server answers; ``install`` puts it in front."""

    def __init__(self, bucket_prefix: str) -> None:
        self.prefix = bucket_prefix
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def logical(self, bucket: str) -> str:
        """The layout's name of a bucket (``jobs``), without the run's prefix."""
        return bucket[len(self.prefix) :] if bucket.startswith(self.prefix) else bucket

    def install(self, server: Any) -> None:
        """Wrap a running werkzeug server's app (what its request handler calls: ``.app``)."""
        inner = server.app

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable:
            began = time.thread_time()
            result = inner(environ, start_response)
            try:
                body = b"".join(result)  # moto answers from memory: nothing streams
            finally:
                if hasattr(result, "close"):
                    result.close()
            self._note(environ, len(body), time.thread_time() - began)
            return [body]

        server.app = counted

    def _note(self, environ: dict[str, Any], sent: int, cpu: float) -> None:
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        method = environ.get("REQUEST_METHOD", "")
        kind = request_kind(method, path, environ.get("QUERY_STRING", ""), self.logical)
        received = int(environ.get("CONTENT_LENGTH") or 0) if method in ("PUT", "POST") else 0
        sent = sent if method == "GET" else 0
        area = kind.split(".", 1)[1]
        with self._lock:
            counts = self._counts
            counts[f"s3.{kind}"] += 1
            counts[f"s3.{kind.split('.')[0]}"] += 1
            counts["s3.requests"] += 1
            counts["cpu.s3_server_s"] += cpu
            for name, size in (("in", received), ("out", sent)):
                if size:
                    counts[f"s3.bytes_{name}"] += size
                    counts[f"s3.bytes_{name}.{area}"] += size

    def read(self) -> Metrics:
        """The counts so far (a copy)."""
        with self._lock:
            return dict(self._counts)


# --- the broker ---------------------------------------------------------------------------------
def queue_of_sent(body: dict[str, Any]) -> str:
    """The work queue a ``task-sent`` names; a countdown's (native delayed delivery) names none,
    so its task's route."""
    from config.topology import TASK_ROUTES

    queue = body.get("queue") or TASK_ROUTES.get(str(body.get("name")), ("?",))[0]
    return str(queue)


class BusMeter:
    """Every event on ``encodeq.events`` and ``celeryev`` while it runs, counted by routing key;
    which tasks were published (``task-sent``) and which runs ended (``task.finished``)."""

    def __init__(self, broker_url: str) -> None:
        self.url = broker_url
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._sent: Counter[str] = Counter()
        self._finished: Counter[str] = Counter()
        self.ended: dict[str, str] = {}  # job id -> job.completed / job.failed
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bus-meter", daemon=True)

    def __enter__(self) -> BusMeter:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the bus meter did not subscribe within 30 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from kombu import Connection, Consumer, Exchange, Queue

        from config.topology import EVENTS_EXCHANGE

        celeryev = Exchange(CELERY_EVENTS, type="topic", durable=True)
        with Connection(self.url) as conn:
            channel = conn.channel()
            queues = []
            for exchange in (EVENTS_EXCHANGE, celeryev):
                exchange.bind(channel).declare()
                name = f"bench.capacity.{exchange.name}.{os.getpid()}"
                queue = Queue(name, exchange, "#", exclusive=True, auto_delete=True, durable=False)
                queues.append(queue)
            with Consumer(channel, queues, callbacks=[self._on], accept=["json"], no_ack=True):
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=0.5)
                    except TimeoutError:
                        continue

    def _on(self, body: Any, message: Any) -> None:
        info = message.delivery_info
        key = str(info.get("routing_key") or "?")
        size = len(message.body) if isinstance(message.body, bytes | str) else 0
        with self._lock:
            self._count(info.get("exchange") == CELERY_EVENTS, key, size, body)

    def _count(self, celery: bool, key: str, size: int, body: Any) -> None:
        body = body if isinstance(body, dict) else {}
        if celery:
            family = "heartbeat" if key.startswith("worker.") else key.split(".")[0]
            self._counts[f"celeryev.{family}"] += 1
            self._counts[f"celeryev.{family}_bytes"] += size
            self._counts[f"celeryev_key.{key}"] += 1
            if key == "task.sent":
                self._sent[str(body.get("uuid"))] += 1
                self._counts[f"published.{queue_of_sent(body)}"] += 1
                self._counts["published.delayed"] += bool(body.get("eta"))
            return
        self._counts["events.total"] += 1
        self._counts["events.bytes"] += size
        self._counts[f"events.{key.split('.')[0]}"] += 1
        self._counts[f"event.{key}"] += 1
        if key == "task.finished":
            self._finished[str(body.get("task_id"))] += 1
            self._counts[f"runs.{body.get('queue')}"] += 1
            self._counts[f"runs.task.{body.get('task')}"] += 1
            self._counts[f"runs.outcome.{body.get('outcome')}"] += 1
            self._counts["runs.redelivered"] += bool(body.get("redelivered"))
            seconds = float(body.get("runtime_s") or 0.0)
            self._counts["runs.task_seconds"] += seconds
            self._counts[f"runs.seconds.{body.get('task')}"] += seconds
        if key in ("job.completed", "job.failed"):
            self.ended[str(body.get("job_id"))] = key

    def read(self) -> Metrics:
        """The counts so far (a copy)."""
        with self._lock:
            return dict(self._counts)

    def settled(self) -> bool:
        """Every task published so far has a finished run (a delayed watchdog has run too)."""
        with self._lock:
            return all(self._finished[task] >= n for task, n in self._sent.items())


def amqp_connections(roots: list[int]) -> int:
    """AMQP connections (sockets to port 5672) the process trees under ``roots`` hold now."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", "( dport = :5672 )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tree = descendants(roots)
    return sum(int(pid) in tree for pid in re.findall(r"pid=(\d+)", out))


def event_bindings(vhost: str) -> dict[str, int]:
    """Queues bound to encodeq.events, by binding key (this bench's own left out)."""
    out = rabbitmqctl(
        "list_bindings", "-p", vhost, "source_name", "destination_name", "routing_key"
    )
    found: dict[str, int] = {}
    for line in out.splitlines():
        source, queue, key = [*line.split("\t"), "", "", ""][:3]
        if source == "encodeq.events" and not queue.startswith("bench.capacity."):
            found[key] = found.get(key, 0) + 1
    return found


# --- CPU -----------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(roots: list[int]) -> set[int]:
    """``roots`` and every live process below them."""
    return set(_tree(roots)[0])


def _tree(roots: list[int]) -> tuple[set[int], dict[int, list[str]]]:
    parents: dict[int, int] = {}
    fields: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(stat[1])
            fields[int(entry.name)] = stat
    tree, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - tree
        tree |= frontier
    return tree, fields


def tree_cpu(roots: list[int]) -> float:
    """CPU-seconds (user+sys) of the process trees under ``roots`` so far.

    Each live process counts its own time (fields utime, stime) and that of its children it has
    waited for (cutime, cstime), which holds their children's in turn: so ffmpeg and ffprobe runs
    that ended are in their pool process's figure and none is counted twice. What this misses: a
    process reparented out of the tree (none here: ffmpeg dies with its parent) and a zombie not
    yet reaped (the bench reads after the job settles)."""
    tree, fields = _tree(roots)
    ticks = sum(sum(int(x) for x in fields[pid][11:15]) for pid in tree if pid in fields)
    return ticks / CLOCK_TICKS


def own_cpu() -> float:
    """This process's CPU-seconds: the uploader, the embedded S3 server, the meters."""
    times = os.times()
    return times.user + times.system


def dump(path: Path, doc: Any) -> None:
    """Write ``doc`` as JSON (the run's record: counts, fits, model)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
