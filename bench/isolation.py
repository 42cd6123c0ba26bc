"""What every benchmark needs: a vhost and an embedded S3 server of its own (so a run never touches
anyone's state), workers to start and stop, and a job to time from upload to completed."""

from __future__ import annotations

import os
import resource
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from console.s3server import EmbeddedS3


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def isolated_stack(name: str) -> Iterator[dict[str, str]]:
    """Create vhost ``encodeq-<name>-<id>`` and start S3; point ENCODEQ_* at them; undo on exit.

    Call it before importing anything that reads settings (the Celery app does, once).
    """
    vhost = f"encodeq-{name}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    s3 = EmbeddedS3()
    env = {
        "ENCODEQ_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "ENCODEQ_S3_ENDPOINT": s3.start(),
        "ENCODEQ_S3_ACCESS_KEY": "bench",
        "ENCODEQ_S3_SECRET_KEY": "bench",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3.stop()
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60
        )


def consumers(url: str, queue: str) -> int:
    """Consumers of ``queue`` now (0 while the queue does not exist yet)."""
    from kombu import Connection

    from core.monitor import queue_depths

    with Connection(url) as conn:
        return queue_depths(conn, (queue,))[0].consumers or 0


@contextmanager
def worker_fleet(
    count: int, env: dict[str, str] | None = None, pin: bool = False
) -> Iterator[None]:
    """``count`` ``encodeq worker --concurrency 1`` processes (each pinned to its own core with
    ``taskset`` when ``pin``), consuming before the block starts, stopped warm after it."""
    from config.settings import Settings
    from config.topology import ENCODE_QUEUE_NAME

    url = Settings().broker_url
    before = consumers(url, ENCODE_QUEUE_NAME)
    procs = []
    for i in range(count):
        argv = [
            "encodeq",
            "worker",
            "--concurrency",
            "1",
            "--loglevel",
            "WARNING",
            "--hostname",
            f"bench{i}@%h",
        ]
        if pin:
            argv = ["taskset", "-c", str(i % (os.cpu_count() or 1)), *argv]
        procs.append(
            subprocess.Popen(
                argv,
                env={**os.environ, **(env or {})},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    try:
        deadline = time.monotonic() + 90
        while consumers(url, ENCODE_QUEUE_NAME) < before + count:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.2)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


@dataclass
class JobRun:
    job_id: str
    #: Upload started to job completed, and the upload alone (until the probe was queued).
    seconds: float
    upload_seconds: float
    started_at: float
    #: CPU seconds this process spent meanwhile: the uploader, and the embedded S3 server, which
    #: shares the machine with the workers (MinIO on its own host would not).
    local_cpu_seconds: float


def run_job(source: Path, mode: str | None = None) -> JobRun:
    """Upload ``source`` and wait for its job to complete (a failed job raises).

    The end is taken from the job's ``job.completed`` event, not by polling the manifest: a poll
    every 0.1 s would cost the embedded S3 server, on the same two cores, seconds of CPU per job.
    The manifest is still read every few seconds in case an event is lost (they are best effort).
    """
    from kombu import Connection

    from config.settings import Settings
    from core.events import EventSubscription
    from core.manifest import JobStore
    from core.storage import Storage
    from uploader.submit import submit

    storage = Storage()
    jobs = JobStore(storage)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    with (
        Connection(Settings().broker_url) as conn,
        EventSubscription(conn, ("job.completed", "job.failed")) as events,
    ):
        started_at, started = time.time(), time.perf_counter()
        job_id = submit(source, storage, mode=mode).job_id
        uploaded = time.perf_counter() - started
        finished = False
        while not finished:
            finished = any(e.get("job_id") == job_id for e in events.events(timeout=3.0))
            if not finished:
                manifest = jobs.load_job(job_id)
                finished = manifest is not None and manifest.finished
        elapsed = time.perf_counter() - started
    now = resource.getrusage(resource.RUSAGE_SELF)
    manifest = jobs.load_job(job_id)
    if manifest is None or manifest.state != "completed":
        raise RuntimeError(f"job {job_id} failed: {manifest.error if manifest else 'no manifest'}")
    local_cpu = now.ru_utime - cpu.ru_utime + now.ru_stime - cpu.ru_stime
    return JobRun(job_id, elapsed, uploaded, started_at, local_cpu)
