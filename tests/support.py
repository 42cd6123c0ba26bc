"""What the tests need to drive the real system: sample media, worker processes, broker views."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kombu import Connection

from config.settings import Settings
from config.topology import CONTROL_QUEUE_NAME, DEAD_LETTER_QUEUE_NAME, ENCODE_QUEUE_NAME
from encodeq.manifest import JobStore, Manifest
from encodeq.monitor import queue_depths
from encodeq.storage import Storage

ENCODEQ = [shutil.which("encodeq") or "encodeq"]


def settings() -> Settings:
    return Settings()


def storage() -> Storage:
    return Storage(settings())


def jobs() -> JobStore:
    return JobStore(storage())


def broker() -> Connection:
    return Connection(settings().broker_url)


# --- waiting on conditions (never a bare sleep) ---------------------------------------------
def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def wait_for_job(job_id: str, timeout: float = 120) -> Manifest:
    store = jobs()

    def finished() -> Manifest | None:
        manifest = store.load(job_id)
        return manifest if manifest is not None and manifest.finished else None

    return wait_for(finished, timeout, f"job {job_id} to finish")


# --- sample media --------------------------------------------------------------------------------
def make_video(
    path: Path,
    width: int = 640,
    height: int = 360,
    duration: float = 3.0,
    audio: bool = True,
    rotate: int | None = None,
    fps: int = 25,
) -> Path:
    """A real H.264(/AAC) MP4 from ffmpeg test sources; ``rotate`` adds a display matrix."""
    if path.exists():
        return path
    raw = path.with_suffix(".raw.mp4") if rotate is not None else path
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
            "-i", f"testsrc2=s={width}x{height}:r={fps}:d={duration}"]  # fmt: skip
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=f=440:d={duration}", "-c:a", "aac", "-shortest"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(raw)]
    subprocess.run(args, check=True, timeout=120)
    if rotate is not None:
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(raw), "-c", "copy",
             "-metadata:s:v:0", f"rotate={rotate}", str(path)],
            check=True, timeout=60,
        )  # fmt: skip
        raw.unlink()
    return path


def ffprobe(path_or_url: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", path_or_url],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout)


# --- the CLI -------------------------------------------------------------------------------------
def encodeq(
    *args: str, timeout: float = 300, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ENCODEQ, *args], capture_output=True, text=True, timeout=timeout, check=check,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def upload_job(path: Path, *options: str, env: dict[str, str] | None = None) -> str:
    """``encodeq upload PATH``: the job id, without waiting for the job."""
    result = encodeq("upload", str(path), *options, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def upload_and_wait(
    *paths: Path, options: tuple[str, ...] = (), timeout: float = 240
) -> list[dict]:
    """``encodeq upload --wait --json``: the final manifest of every job."""
    result = encodeq("upload", *map(str, paths), "--wait", "--json", "--timeout", str(timeout),
                     *options, timeout=timeout + 60)  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-3000:]
    doc = json.loads(result.stdout)
    return doc if isinstance(doc, list) else [doc]


def download_rendition(playlist_uri: str, into: Path) -> Path:
    """Copy a rendition (playlist and segments) out of storage; returns the local playlist."""
    from encodeq.storage import RENDITIONS, parse_uri

    _, key = parse_uri(playlist_uri)
    s = storage()
    for name in s.list_keys(RENDITIONS, key.rsplit("/", 1)[0] + "/"):
        s.download(RENDITIONS, name, into / name)
    return into / key


# --- worker processes ----------------------------------------------------------------------------
def queue_state(name: str, url: str | None = None) -> tuple[int, int]:
    """(ready messages, consumers) of a queue, by a passive declare (0, 0 while it is missing)."""
    with Connection(url) if url else broker() as conn:
        [depth] = queue_depths(conn, (name,))
    return depth.messages or 0, depth.consumers or 0


def consumers(name: str = ENCODE_QUEUE_NAME, url: str | None = None) -> int:
    try:
        return queue_state(name, url)[1]
    except Exception:
        return 0


class Worker:
    def __init__(self, name: str, proc: subprocess.Popen, log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pool_children(self) -> list[int]:
        """Pids of the prefork pool processes (children of the worker's main process)."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.pid)], capture_output=True,
                             text=True)  # fmt: skip
        return [int(p) for p in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker: main process, pool and any ffmpeg (its process group)."""
        os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        """Warm shutdown (SIGTERM): finish the task in hand, then exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class WorkerFleet:
    def __init__(self) -> None:
        self.workers: list[Worker] = []

    def start(
        self,
        name: str,
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
    ) -> Worker:
        """``encodeq worker`` as compose runs it (or ``argv`` exactly as given, e.g. compose's own
        command line); returns once it consumes from both work queues."""
        url = (env or {}).get("ENCODEQ_BROKER_URL")
        queues = (CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME)
        before = {queue: consumers(queue, url) for queue in queues}
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"encodeq-worker-{name}-{os.getpid()}.log"
        argv = argv or ["encodeq", "worker", "--concurrency", str(concurrency),
                        "--hostname", f"{name}@%h", "--loglevel", "INFO"]  # fmt: skip
        program = ENCODEQ[0] if argv[0] == "encodeq" else (shutil.which(argv[0]) or argv[0])
        proc = subprocess.Popen(
            [program, *argv[1:]], stdout=log.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )  # fmt: skip
        worker = Worker(name, proc, log)
        self.workers.append(worker)

        def consuming() -> bool:
            return proc.poll() is not None or all(consumers(q, url) > n for q, n in before.items())

        wait_for(consuming, 60, f"worker {name} to consume from the work queues")
        if proc.poll() is not None:
            raise AssertionError(f"worker {name} exited:\n{worker.output()[-3000:]}")
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.terminate(timeout=30)


# --- the dead-letter queue -----------------------------------------------------------------------
def dlq_messages() -> list[Any]:
    """Every message in the DLQ, looked at without consuming: held unacked, then the channel is
    closed so they return in order (classic queue: no delivery is counted against them)."""
    with broker() as conn:
        ch = conn.channel()
        found = []
        while True:
            message = ch.basic_get(DEAD_LETTER_QUEUE_NAME, no_ack=False)
            if message is None:
                break
            found.append(message)
        ch.close()
    return found


def dlq_for(task_ids: set[str] | None = None, job_id: str | None = None) -> list[Any]:
    """DLQ messages of some tasks or of one job (the body's first argument)."""
    found = []
    for message in dlq_messages():
        headers = message.headers or {}
        if task_ids is not None and headers.get("id") in task_ids:
            found.append(message)
        elif job_id is not None:
            try:
                args = json.loads(message.body)[0]
            except (ValueError, TypeError, KeyError, IndexError):
                continue
            if args and args[0] == job_id:
                found.append(message)
    return found


def death_reason(message: Any) -> str:
    return message.headers["x-death"][0]["reason"]


__all__ = [
    "CONTROL_QUEUE_NAME",
    "DEAD_LETTER_QUEUE_NAME",
    "ENCODE_QUEUE_NAME",
]


# --- the DLQ inspector (tests/test_dlq_*.py) -----------------------------------------------------
def dlq(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Any:
    """``encodeq dlq ...`` as a user runs it, stdin not a terminal."""
    return subprocess.run(
        [*ENCODEQ, "dlq", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def dlq_json(*args: str, env: dict[str, str] | None = None) -> Any:
    result = dlq(*args, "--json", env=env)
    assert result.returncode == 0, f"dlq {args}: {result.returncode}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def origin_queue(name: str) -> str:
    """A classic queue dead-lettering into encodeq.dlx: a cheap place for messages to die in."""
    from config.topology import declare_topology

    with broker() as conn:
        declare_topology(conn)  # the DLX first: a missing one drops dead letters silently
        ch = conn.channel()
        ch.queue_declare(name, durable=True, auto_delete=False,
                         arguments={"x-dead-letter-exchange": "encodeq.dlx"})  # fmt: skip
        ch.close()
    return name


def celery_message(task: str, job: str | None = None, **headers: Any) -> tuple[bytes, dict]:
    """A Celery protocol 2 message (body, properties) with its own task id."""
    import uuid

    task_id = str(uuid.uuid4())
    job = job or uuid.uuid4().hex
    body = json.dumps([[job], {}, {"callbacks": None, "errbacks": None, "chain": None}]).encode()
    props = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "correlation_id": task_id,
        "application_headers": {"lang": "py", "task": task, "id": task_id, "retries": 0,
                                "argsrepr": f"('{job}',)", **headers},
    }  # fmt: skip
    return body, props


def kill_into_dlq(queue: str, messages: list[tuple[bytes, dict]]) -> None:
    """Publish to ``queue`` and reject each without requeue: real dead letters, reason rejected."""
    import amqp

    with broker() as conn:
        raw = conn.connection
        ch = raw.channel()
        for body, props in messages:
            ch.basic_publish(amqp.Message(body, **props), exchange="", routing_key=queue)
        rejected = 0
        while rejected < len(messages):
            got = ch.basic_get(queue, no_ack=False)
            if got is None:
                continue
            ch.basic_reject(got.delivery_tag, requeue=False)
            rejected += 1
        ch.close()


def queue_messages(name: str, consume: bool = False) -> list[Any]:
    """Every message of a queue; left in place (held, then returned) unless ``consume``."""
    with broker() as conn:
        ch = conn.channel()
        ch.auto_decode = False  # bodies as the bytes that arrived
        found = []
        while (message := ch.basic_get(name, no_ack=False)) is not None:
            found.append(message)
        if consume and found:
            ch.basic_ack(found[-1].delivery_tag, multiple=True)
        ch.close()
    return found


def dlq_of_task(task: str) -> list[Any]:
    return [m for m in dlq_messages() if (m.headers or {}).get("task") == task]


# --- the HTTP service (tests/test_http_api.py, tests/test_dashboard_browser.py) -----------------
class Server:
    """An ``encodeq serve`` subprocess and where it answers."""

    def __init__(self, proc: subprocess.Popen, base: str, log: Path) -> None:
        self.proc, self.base, self.log = proc, base, log

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; HTTP errors are answers, not exceptions."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def http_json(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    status, _, data = http(method, url, **kwargs)
    return status, json.loads(data) if data else None


def multipart(filename: str, data: bytes, field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part: (body, content type)."""
    boundary = "encodeq-test-" + os.urandom(8).hex()
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n')  # fmt: skip
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def start_server(
    argv: list[str] | None = None, env: dict[str, str] | None = None, port: int | None = None
) -> Server:
    """``encodeq serve`` (or ``argv`` exactly as given); returns once it answers and follows the
    events exchange."""
    from encodeq.s3server import free_port

    port = port or free_port()
    argv = argv or ["encodeq", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"encodeq-serve-{port}-{os.getpid()}.log"
    program = ENCODEQ[0] if argv[0] == "encodeq" else argv[0]
    proc = subprocess.Popen(
        [program, *argv[1:]], stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )  # fmt: skip
    server = Server(proc, f"http://127.0.0.1:{port}", log)

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        try:
            status, doc = http_json("GET", f"{server.base}/api/health", timeout=2)
        except OSError:
            return False
        return status == 200 and doc["events"]

    wait_for(ready, 60, f"encodeq serve on port {port}")
    if proc.poll() is not None:
        raise AssertionError(f"encodeq serve exited {proc.returncode}:\n{server.output()[-3000:]}")
    return server


def event_queues() -> list[str]:
    """Names of the private queues subscribed to ``encodeq.events`` in this run's vhost."""
    vhost = settings().broker_url.rsplit("/", 1)[1]
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [n for n in out.stdout.split() if n.startswith("encodeq.events.")]


def open_cors(logical: str) -> None:
    """Let pages of any origin read a bucket's objects (with a presigned URL: it stays private).

    MinIO answers CORS for every origin by default; moto, standing in for it here, only after a
    bucket CORS rule. A ``<video crossorigin>`` needs it to play HLS segments from S3.
    """
    import contextlib

    import boto3

    s = settings()
    client = boto3.client(
        "s3", endpoint_url=s.s3_endpoint, aws_access_key_id=s.s3_access_key,
        aws_secret_access_key=s.s3_secret_key, region_name=s.s3_region,
    )  # fmt: skip
    bucket = s.bucket(logical)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    rule = {"AllowedOrigins": ["*"], "AllowedMethods": ["GET", "HEAD"], "AllowedHeaders": ["*"],
            "MaxAgeSeconds": 3600}  # fmt: skip
    client.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule]})
