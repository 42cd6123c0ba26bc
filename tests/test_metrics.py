"""Prometheus metrics, scraped over HTTP from a real worker and a real web service while real jobs
run, before and after: the numbers must move by what happened (core/metrics.py names them).

The worker is ``python -m worker`` as compose runs it, with ``ENCODEQ_METRICS_PORT``: a node per
queue, each with its pool processes, and one exporter for all of them in the worker's own process
(worker/exporter.py). A job's probe and finalize run on the control node and its encodes on the
express node, so one scrape counting all of them shows the nodes' files summed. The web service's
``/metrics`` is read the same way (uploader/web/metrics.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.commands import encodeq, upload_job
from support.events import Events
from support.fleet import Worker, WorkerFleet, held_encode
from support.http import Server, http, http_json, multipart, start_server
from support.media import make_video
from support.waiting import wait_for

from config.settings import Settings
from console.s3server import free_port
from console.tcp_proxy import TcpProxy
from core import metrics as names
from core.job_model import Manifest, SourceInfo
from core.queue_depths import WATCHED_QUEUES, QueueDepth
from uploader.web.metrics import WebMetrics
from worker.exporter import METRICS_FOLDER

TOKEN = "metrics-token-" + os.urandom(4).hex()
AUTH = {"Authorization": f"Bearer {TOKEN}"}

Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    status, headers, body = http("GET", url, timeout=30)
    assert status == 200, (url, status, body[:500])
    assert headers.get("Content-Type", headers.get("content-type", "")).startswith("text/plain")
    return parse(body.decode())


def parse(text: str) -> Samples:
    """(name, labels, value) of every sample of a scrape."""
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v for n, got, v in samples if n == name and all(got.get(k) == x for k, x in labels.items())
    )


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


class Stack:
    """The worker (S3 through a proxy this test can cut) and the web service, with their urls."""

    def __init__(self, worker: Worker, server: Server, proxy: TcpProxy, port: int) -> None:
        self.worker, self.server, self.proxy = worker, server, proxy
        self.worker_url = f"http://127.0.0.1:{port}/metrics"
        self.web_url = f"{server.base}/metrics"

    def worker_samples(self) -> Samples:
        return scrape(self.worker_url)

    def web_samples(self) -> Samples:
        return scrape(self.web_url)

    def job(self, job_id: str) -> dict[str, Any]:
        status, doc = http_json("GET", f"{self.server.base}/api/jobs/{job_id}", headers=AUTH)
        assert status == 200, doc
        return doc

    def ended(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        return wait_for(
            lambda: (d := self.job(job_id))["state"] in ("completed", "failed") and d,
            timeout,
            f"job {job_id} to end",
        )

    def upload(self, name: str, data: bytes) -> tuple[int, Any]:
        body, content_type = multipart(name, data)
        headers = {"Content-Type": content_type, **AUTH}
        return http_json("POST", f"{self.server.base}/api/uploads", body=body, headers=headers)

    def moved(self, before: Samples, name: str, by: float, what: str, **labels: str) -> Samples:
        """The worker's samples once ``name`` moved by ``by`` (a run is counted just after its
        job's state changes: wait for it, never a guessed moment)."""
        return wait_for(
            lambda: (s := self.worker_samples()) and delta(before, s, name, **labels) == by and s,
            60,
            what,
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    endpoint = urlsplit(os.environ["ENCODEQ_S3_ENDPOINT"])
    proxy = TcpProxy(endpoint.hostname, endpoint.port).start()
    fleet = WorkerFleet()
    port = free_port()
    env = {
        "ENCODEQ_METRICS_PORT": str(port),
        "ENCODEQ_S3_ENDPOINT": proxy.endpoint,
        "ENCODEQ_RETRY_JITTER": "false",
    }
    server = None
    try:
        worker = fleet.start("metrics", env=env)
        server = start_server(env={"ENCODEQ_API_TOKEN": TOKEN})
        yield Stack(worker, server, proxy, port)
    finally:
        if server is not None:
            server.stop()
        fleet.stop_all()
        proxy.cut()


def test_a_job_moves_the_workers_and_the_web_services_numbers(
    stack: Stack, media_dir: Path
) -> None:
    worker = stack.worker_samples()

    def sampled() -> Samples | None:  # the events hub samples the queues once a second
        now = stack.web_samples()
        return now if any(n == names.QUEUE_MESSAGES for n, _, _ in now) else None

    web = wait_for(sampled, 30, "the web service's first queue sample")
    # What the uploader sees of the queues: every work queue and the DLQ, with their consumers.
    shown = {labels["queue"] for n, labels, _ in web if n == names.QUEUE_MESSAGES}
    assert shown == set(WATCHED_QUEUES), shown
    assert total(web, names.QUEUE_CONSUMERS, queue="encodeq.control") >= 1
    assert total(web, names.BROKER_CONNECTED) == 1 and total(web, names.JOB_STORE_UP) == 1

    source = make_video(media_dir / "metrics.mp4", 640, 360, duration=2)  # per-rung: 360p, 240p
    status, doc = stack.upload("metrics.mp4", source.read_bytes())
    assert status == 202, doc
    assert stack.upload("empty.mp4", b"")[0] == 400
    assert stack.ended(doc["job_id"])["state"] == "completed"

    runs = "encodeq_task_duration_seconds_count"
    after = stack.moved(worker, runs, 4, "the job's four runs to be counted", outcome="ok")
    expected = {"probe": 1, "encode": 2, "finalize": 1}
    assert {t: delta(worker, after, runs, task=t, outcome="ok") for t in expected} == expected
    assert delta(worker, after, "encodeq_task_duration_seconds_sum") > 0
    for rung in ("360p", "240p"):
        assert delta(worker, after, "encodeq_rung_encode_seconds_count", rung=rung) == 1
        assert delta(worker, after, "encodeq_rung_encode_seconds_sum", rung=rung) > 0
        media = delta(worker, after, "encodeq_encoded_media_seconds_total", rung=rung)
        assert 1.5 <= media <= 2.5, (rung, media)
    assert total(after, "encodeq_tasks_running") == 0

    def web_moved() -> Samples | None:
        now = stack.web_samples()
        return now if delta(web, now, "encodeq_jobs", state="completed") == 1 else None

    now = wait_for(web_moved, 30, "the web service to count the completed job")
    assert delta(web, now, "encodeq_uploads_total", result="accepted") == 1
    assert delta(web, now, "encodeq_uploads_total", result="refused", reason="empty_file") == 1


@pytest.mark.slow
def test_a_poison_upload_is_counted_as_a_dead_letter_with_its_code(stack: Stack) -> None:
    worker, web = stack.worker_samples(), stack.web_samples()
    status, doc = stack.upload("poison.mp4", os.urandom(64 * 1024))
    assert status == 202, doc
    failed = stack.ended(doc["job_id"])
    assert failed["state"] == "failed" and failed["error"]["code"] == "not_a_video"
    dead = "encodeq_dead_letters_total"
    after = stack.moved(worker, dead, 1, "the dead letter to be counted")
    assert delta(worker, after, dead, task="probe", code="not_a_video") == 1
    runs = "encodeq_task_duration_seconds_count"
    assert delta(worker, after, runs, task="probe", outcome="dead") == 1

    def web_moved() -> Samples | None:
        now = stack.web_samples()
        failed = delta(web, now, "encodeq_jobs", state="failed") == 1
        dlq = delta(web, now, names.QUEUE_MESSAGES, queue="encodeq.dlq") >= 1
        return now if failed and dlq else None

    wait_for(web_moved, 30, "the web service to count the failed job and its dead letter")


@pytest.mark.slow
def test_a_retry_is_counted_when_s3_is_cut_under_the_probe(stack: Stack, media_dir: Path) -> None:
    worker = stack.worker_samples()
    stack.proxy.cut()
    try:
        job_id = upload_job(make_video(media_dir / "metrics-retry.mp4", 320, 180, duration=2))
        retries = "encodeq_task_retries_total"
        after = wait_for(
            lambda: (s := stack.worker_samples()) and delta(worker, s, retries) >= 1 and s,
            60,
            "a retry to be counted",
        )
    finally:
        stack.proxy.restore()
    assert delta(worker, after, retries, task="probe") >= 1
    runs = "encodeq_task_duration_seconds_count"
    assert delta(worker, after, runs, task="probe", outcome="retry") >= 1
    assert stack.ended(job_id)["state"] == "completed"


@pytest.mark.slow
def test_a_killed_pool_process_is_counted_lost_and_no_longer_running(
    stack: Stack, media_dir: Path
) -> None:
    """The live gauge of a SIGKILLed pool process goes with it (``mark_process_dead`` at the
    scrape); the counters it wrote stay."""
    worker = stack.worker_samples()
    source = make_video(media_dir / "metrics-lost.mp4", 426, 240, duration=6)
    with Events(("task.*",)) as events:
        job_id, first = held_encode(events, source)  # one rung: 240p
        running = stack.worker_samples()
        assert total(running, "encodeq_tasks_running", task="encode") == 1
        os.kill(first["pid"], signal.SIGKILL)
        after = stack.moved(worker, "encodeq_tasks_lost_total", 1, "the lost run to be counted")
    assert delta(worker, after, "encodeq_tasks_lost_total", task="encode") == 1
    assert stack.ended(job_id)["state"] == "completed"  # redelivered, on a new pool process
    done = stack.moved(worker, "encodeq_rung_encode_seconds_count", 1, "the encode", rung="240p")
    assert total(done, "encodeq_tasks_running") == 0


@pytest.mark.slow
def test_a_chunked_job_counts_each_chunk(stack: Stack, media_dir: Path) -> None:
    worker = stack.worker_samples()
    source = make_video(media_dir / "metrics-chunked.mp4", 640, 360, duration=10)
    job_id = upload_job(source, "--mode", "chunked")
    assert stack.ended(job_id)["state"] == "completed"
    manifest = stack.job(job_id)
    chunks = len(manifest["chunks"]["durations"])
    assert manifest["chunks"]["whole_rungs"] == ["240p"]  # encoded whole, by a rung encode
    after = stack.moved(worker, "encodeq_chunk_encode_seconds_count", chunks, "every chunk")
    assert delta(worker, after, "encodeq_chunk_encode_seconds_count", top_rung="360p") == chunks
    assert delta(worker, after, "encodeq_rung_encode_seconds_count", rung="240p") == 1
    # the chunks and the whole lowest rung each count their seconds of source for their rungs
    for rendition in manifest["renditions"]:
        media = delta(worker, after, "encodeq_encoded_media_seconds_total", rung=rendition["name"])
        assert 9 <= media <= 11, (rendition["name"], media)


@pytest.mark.slow
def test_one_exporter_per_worker_its_port_and_folder(workers: WorkerFleet) -> None:
    """A worker's nodes share its one port; a second worker asking for that port is refused at
    start; a warm stop removes the worker's folder."""
    port = free_port()
    env = {"ENCODEQ_METRICS_PORT": str(port)}
    worker = workers.start("exporter", env=env)
    assert len(worker.forked_nodes()) == 3  # control, high, bulk: none of them bound the port
    folder = Settings().private_dir(METRICS_FOLDER) / str(worker.pid)
    assert folder.is_dir() and oct(folder.stat().st_mode & 0o777) == "0o700"
    assert scrape(f"http://127.0.0.1:{port}/metrics") is not None
    second = encodeq("worker", "--hostname", "second@%h", env=env, timeout=60)
    assert second.returncode == 2 and "cannot serve metrics" in second.stderr, second.stderr
    assert worker.terminate() == 0
    assert not folder.exists()


# --- the pure parts ------------------------------------------------------------------------------
AGGREGATION = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    from prometheus_client import CollectorRegistry, generate_latest
    from core import metrics
    from worker import exporter

    folder = exporter.fresh_folder(Path(sys.argv[1]), os.getpid())
    exporter.enable_multiprocess(folder)
    registry = CollectorRegistry()
    collector = exporter.TreeCollector(registry, folder, root=os.getpid())
    pids = []
    for i in range(3):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            metrics.run_started("encode")
            metrics.run_finished("encode", "ok", None, 1.5)
            metrics.run_started("encode")  # and another run, still going
            os.write(write, b"x")
            if i == 2:
                time.sleep(120)  # killed below
            os._exit(0)
        os.read(read, 1)
        pids.append(pid)
    os.waitpid(pids[0], 0)  # exited and reaped: gone
    while open(f"/proc/{pids[1]}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)  # exited, not reaped yet: a zombie
    first = generate_latest(registry).decode()
    os.kill(pids[2], signal.SIGKILL)  # killed mid-run: its file says running
    os.waitpid(pids[2], 0)
    second = generate_latest(registry).decode()
    os.waitpid(pids[1], 0)
    print(json.dumps({"first": first, "second": second, "files": os.listdir(folder)}))
    """
)


@pytest.mark.unit
def test_the_exporter_sums_every_process_and_drops_the_dead_ones_live_gauges(
    tmp_path: Path,
) -> None:
    """Three forked processes record a run each and start another: the exporter's registry sums
    their files; a process that exited (reaped or a zombie) or was killed no longer counts as
    running, while its finished run stays counted."""
    result = subprocess.run(
        [sys.executable, "-c", AGGREGATION, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    first, second = parse(out["first"]), parse(out["second"])
    runs = "encodeq_task_duration_seconds_count"
    for samples in (first, second):
        assert total(samples, runs, task="encode", outcome="ok") == 3
        assert total(samples, "encodeq_task_duration_seconds_sum", task="encode") == 4.5
    assert total(first, "encodeq_tasks_running", task="encode") == 1  # the one still alive
    assert total(second, "encodeq_tasks_running", task="encode") == 0
    assert not [f for f in out["files"] if f.startswith("gauge_live")]


SOURCE = SourceInfo(uri="s3://uploads/x/source.mp4", filename="x.mp4", size_bytes=1)


class FakeJobs:
    """A job store of three jobs that counts its reads."""

    def __init__(self) -> None:
        self.manifests = {
            job_id: Manifest(job_id=job_id, state=state, source=SOURCE)  # type: ignore[arg-type]
            for job_id, state in (
                ("a" * 32, "completed"),
                ("b" * 32, "failed"),
                ("c" * 32, "queued"),
            )
        }
        self.reads: list[str] = []

    def job_ids(self) -> list[str]:
        return sorted(self.manifests)

    def load_job(self, job_id: str) -> Manifest | None:
        self.reads.append(job_id)
        return self.manifests[job_id].model_copy()


class FakeHub:
    def __init__(self) -> None:
        self.connected = threading.Event()
        self.monitor = type("M", (), {"queues": [QueueDepth("encodeq.control", 3, 1)]})()


@pytest.mark.unit
def test_web_metrics_count_jobs_from_the_store_and_remember_finished_ones() -> None:
    jobs, hub = FakeJobs(), FakeHub()
    web = WebMetrics(jobs, hub, every_s=0)  # type: ignore[arg-type]
    samples = parse(web.expose().decode())
    assert {
        s: total(samples, "encodeq_jobs", state=s) for s in ("completed", "failed", "queued")
    } == {
        "completed": 1,
        "failed": 1,
        "queued": 1,
    }
    assert total(samples, "encodeq_oldest_queued_job_age_seconds") >= 0
    assert total(samples, names.BROKER_CONNECTED) == 0
    assert not [n for n, _, _ in samples if n == names.QUEUE_MESSAGES]  # stale: not shown
    jobs.reads.clear()
    hub.connected.set()
    web.upload(False, "busy")
    samples = parse(web.expose().decode())
    assert sorted(jobs.reads) == ["b" * 32, "c" * 32]  # the completed job is not read again
    assert total(samples, names.QUEUE_MESSAGES, queue="encodeq.control") == 3
    assert total(samples, "encodeq_uploads_total", result="refused", reason="busy") == 1
    assert total(samples, "encodeq_uploads_total", result="accepted") == 0
    assert {n for n, _, _ in samples} <= names.exposed_names()
