"""What things cost apart from a job, as references for the capacity model (bench_capacity.py).

* one ffmpeg doing every rung from one decode: its CPU-seconds (the pipeline's are compared);
* one janitor sweep (worker/janitor.py): its S3 requests per stored job;
* what this broker sustains, a few seconds each, in the bench's own vhost, with kombu as Celery
  uses it (below).

The broker's references:

* one quorum queue: persistent messages published with publisher confirms (one at a time per
  connection, as Celery's ``confirm_publish`` does), then consumed with prefetch 1 and an ack
  per message (a worker's consumer): the work one task message costs the queue's leader;
* a topic exchange like ``encodeq.events``: transient messages published with confirms (events
  go through the same confirming producer pool), routed to ``SUBSCRIBERS`` queues bound to ``#``.

This is RabbitMQ 3.10 on 2 cores shared with the workers' idle processes and whatever else runs
on the machine, a single node (a quorum queue of one replica: a 3-node cluster replicates every
message twice more): lower bounds, not what a dedicated broker does.
"""

from __future__ import annotations

import resource
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capacity_meters import S3Meter, diff

CLIENTS = 4
SUBSCRIBERS = 4
SECONDS = 3.0
#: About the size of a task message's JSON body (the Celery envelope adds headers).
BODY = {"args": ["0" * 32, "720p"], "kwargs": {}, "pad": "x" * 200}


def _in_threads(work: Callable[[], int], clients: int) -> tuple[int, float]:
    """Run ``work`` on ``clients`` threads at once; the sum of what they counted, and the time
    (the first error of any thread raised here)."""
    counts: list[int] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            counts.append(work())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(counts), time.perf_counter() - started


def _publisher(url: str, exchange: Any, key: str, persistent: bool) -> Callable[[], int]:
    def publish() -> int:
        from kombu import Connection, Producer

        sent = 0
        with Connection(url, transport_options={"confirm_publish": True}) as conn:
            producer = Producer(conn.channel(), exchange=exchange, routing_key=key)
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                producer.publish(BODY, serializer="json", delivery_mode=2 if persistent else 1)
                sent += 1
        return sent

    return publish


def _consumer(url: str, queue: Any, last: list[float]) -> Callable[[], int]:
    """Consume and ack until the queue is empty (or SECONDS); the time of the last ack goes in
    ``last``, so the half second that finds the queue empty is not counted."""

    def consume() -> int:
        from kombu import Connection, Consumer

        got = [0]

        def ack(body: Any, message: Any) -> None:
            message.ack()
            got[0] += 1
            last.append(time.perf_counter())

        with Connection(url) as conn:
            channel = conn.channel()
            with Consumer(channel, [queue], callbacks=[ack], accept=["json"], prefetch_count=1):
                deadline = time.monotonic() + SECONDS
                while time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=0.5)
                    except TimeoutError:
                        break  # the queue is empty
        return got[0]

    return consume


def quorum_queue(url: str) -> dict[str, float]:
    """Publish and consume rates of one quorum queue (msg/s), CLIENTS connections each way."""
    from kombu import Connection, Exchange, Queue

    name, default = "bench.capacity.quorum", Exchange("")
    queue = Queue(name, default, name, queue_arguments={"x-queue-type": "quorum"})
    with Connection(url) as conn:
        bound = queue.bind(conn.default_channel)
        bound.declare()
        last: list[float] = []
        try:
            published, took = _in_threads(_publisher(url, default, name, True), CLIENTS)
            started = time.perf_counter()
            consumed, _ = _in_threads(_consumer(url, queue, last), CLIENTS)
        finally:
            bound.delete()
        took_c = max(last, default=started + 1) - started
    return {
        "publish_confirmed_per_s": round(published / took),
        "consume_acked_per_s": round(consumed / took_c),
        "clients": CLIENTS,
    }


def topic_exchange(url: str) -> dict[str, float]:
    """Publish rate (msg/s, with confirms) into a topic exchange with SUBSCRIBERS queues on
    ``#``; each publish is delivered to every one of them."""
    from kombu import Connection, Exchange, Queue

    exchange = Exchange("bench.capacity.topic", type="topic", durable=False)
    queues = [
        Queue(f"bench.capacity.sub{i}", exchange, "#", durable=False, auto_delete=False)
        for i in range(SUBSCRIBERS)
    ]
    with Connection(url) as conn:
        channel = conn.default_channel
        exchange.bind(channel).declare()
        bound = [q.bind(channel) for q in queues]
        for queue in bound:
            queue.declare()
        try:
            work = _publisher(url, exchange, "rendition.progress", False)
            published, took = _in_threads(work, CLIENTS)
            drained = _drain(url, queues[0])
        finally:
            for queue in bound:
                queue.delete()
            exchange.bind(channel).delete()
    rate = published / took
    return {
        "publish_confirmed_per_s": round(rate),
        "subscribers": SUBSCRIBERS,
        "deliveries_per_s": round(rate * SUBSCRIBERS),
        "drain_per_s": round(drained),
    }


def _drain(url: str, queue: Any) -> float:
    """How fast one subscriber takes its queue (no acks, kombu, as EventSubscription does)."""
    from kombu import Connection, Consumer

    got, last = [0], [0.0]

    def take(body: Any, message: Any) -> None:
        got[0] += 1
        last[0] = time.perf_counter()

    with Connection(url) as conn:
        started = time.perf_counter()
        with Consumer(conn.channel(), [queue], callbacks=[take], accept=["json"], no_ack=True):
            while time.perf_counter() - started < SECONDS:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    break
    return got[0] / (last[0] - started) if got[0] else 0.0


def broker_references(url: str) -> dict[str, Any]:
    """Both broker references, printed and labelled as what they are."""
    found = {"quorum_queue": quorum_queue(url), "topic_exchange": topic_exchange(url)}
    print(f"{'broker':12} {found}", flush=True)
    return {"label": "measured here (2 shared cores, 1 node: lower bounds)", **found}


def one_ffmpeg_cpu(sources: dict[float, Path]) -> dict[str, float]:
    """CPU-seconds of one ffmpeg doing every rung from one decode (bench_pipeline's (a)): what
    the pipeline's CPU is compared with."""
    from bench_pipeline import one_process_all_rungs

    found = {}
    for length, path in sorted(sources.items()):
        with tempfile.TemporaryDirectory(prefix="capacity-a-") as tmp:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            one_process_all_rungs(path, Path(tmp))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        found[f"{length:g}"] = round(spent, 2)
    return found


def janitor_sweep(s3: S3Meter, extra_jobs: int) -> dict[str, Any]:
    """One janitor sweep (worker/janitor.py, the real function) over the jobs stored plus
    ``extra_jobs`` copies of a completed job document: the S3 requests it makes per stored job."""
    from config.settings import get_settings
    from core.celery_app import publisher
    from core.layout import JOBS, manifest_key
    from core.manifest import JobStore
    from core.storage import Storage
    from worker.janitor import sweep

    storage = Storage()
    jobs = JobStore(storage)
    template = storage.get_json(JOBS, manifest_key(jobs.job_ids()[0]))
    for i in range(extra_jobs):
        copy = {**template, "job_id": f"{i:032x}"}
        storage.put_json(JOBS, manifest_key(copy["job_id"]), copy)
    stored = len(jobs.job_ids())
    before, started = s3.read(), time.perf_counter()
    sweep(publisher(), storage, get_settings())
    seconds = time.perf_counter() - started
    spent = diff(s3.read(), before)
    return {
        "jobs_stored": stored,
        "requests": spent,
        "requests_per_stored_job": round(spent.get("s3.requests", 0) / stored, 4),
        "seconds_here": round(seconds, 3),  # moto in this process: not MinIO's latency
    }


def watchdog_pass(s3: S3Meter, job_id: str) -> dict[str, Any]:
    """The S3 reads of one straggler-watchdog run (worker/modes/chunked/stragglers.py: the job,
    then every chunk's record), made with the same calls on a finished chunked job: a lower bound,
    since a chunk still running costs a second GET (its completed record first, then its live one).
    The watchdog runs every ``straggler_check_s`` while chunks run: how often is clock-driven."""
    from core.manifest import JobStore
    from core.storage import Storage
    from worker.modes.chunked.chunked_job import chunked_manifest

    jobs = JobStore(Storage())
    before = s3.read()
    manifest = chunked_manifest(jobs, job_id)
    assert manifest is not None and manifest.chunks is not None
    chunks = manifest.chunks.count
    for index in range(chunks):
        jobs.load_chunk(job_id, index)
    spent = diff(s3.read(), before)
    gets = spent.get("s3.GET", 0.0)
    return {"chunks": chunks, "requests": spent, "gets_fixed": gets - chunks, "gets_per_chunk": 1.0}
