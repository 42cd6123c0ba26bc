"""What the tests need to drive the real system: sample media, worker processes, broker views."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kombu import Connection

from config.settings import Settings
from config.topology import CONTROL_QUEUE_NAME, DEAD_LETTER_QUEUE_NAME, ENCODE_QUEUE_NAME
from core.manifest import JobStore, Manifest
from core.monitor import queue_depths
from core.storage import Storage

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
    args = [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=s={width}x{height}:r={fps}:d={duration}",
    ]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=f=440:d={duration}", "-c:a", "aac", "-shortest"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(raw)]
    subprocess.run(args, check=True, timeout=120)
    if rotate is not None:
        subprocess.run(
            [
                "ffmpeg",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(raw),
                "-c",
                "copy",
                "-metadata:s:v:0",
                f"rotate={rotate}",
                str(path),
            ],
            check=True,
            timeout=60,
        )
        raw.unlink()
    return path


#: Frame rates as cameras and phones record them (ffmpeg's spelling), and "vfr": variable.
FRAME_RATES = {
    "23.976": "24000/1001",
    "24": "24",
    "25": "25",
    "29.97": "30000/1001",
    "30": "30",
    "50": "50",
    "59.94": "60000/1001",
    "60": "60",
    "vfr": "30",
}
#: Keyframe patterns: every 1 s or 2 s, x264's own choice (scene cuts, at most every 250 frames),
#: or open GOPs (B-frames shown before a keyframe are decoded after it).
GOP_KINDS = ("1s", "2s", "scene-cut", "open-gop")


def make_clip(
    path: Path,
    rate: str,
    duration: float,
    gop: str,
    size: str = "64x36",
    bframes: int = 0,
    audio: bool = False,
) -> Path:
    """An H.264 clip of ``rate`` (a FRAME_RATES key) and ``gop`` (a GOP_KINDS value) whose picture
    turns negative every couple of seconds (a scene cut for x264). "vfr": 30 fps timestamps
    jittered by up to 0.4 frame, every 13th frame dropped (about 27.7 fps, intervals 0.6 to 2.2
    frames), on a 90 kHz clock. Tiny by default, so minutes of it take seconds."""
    if path.exists():
        return path
    fps = FRAME_RATES[rate]
    num, _, den = fps.partition("/")
    nominal = round(int(num) / int(den or 1))
    picture = "negate=enable='lt(mod(t,4.3),2.1)'"
    timing: list[str] = []
    if rate == "vfr":
        jitter = "settb=1/90000,setpts='(N+0.2*sin(1.7*N))/30/TB'"
        picture += f",{jitter},select='not(eq(mod(n,13),7))'"
        timing = ["-fps_mode", "passthrough", "-enc_time_base", "1:90000"]
        if path.suffix in (".mp4", ".mov"):
            timing += ["-video_track_timescale", "90000"]
    every = {"1s": nominal, "2s": 2 * nominal, "open-gop": 2 * nominal}.get(gop)
    keyframes = ["-sc_threshold", "40"]  # scene-cut: x264's defaults (keyint 250, scene cuts)
    if every is not None:
        keyframes = ["-g", str(every), "-keyint_min", str(every), "-sc_threshold", "0"]
    if gop == "open-gop":
        keyframes += ["-x264-params", "open-gop=1:b-pyramid=0"]
        bframes = max(bframes, 3)
    source = f"testsrc2=s={size}:r={fps}:d={duration}"
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=f=440:d={duration}", "-c:a", "aac", "-shortest"]
    args += ["-vf", picture, *timing, "-c:v", "libx264", "-preset", "veryfast", *keyframes]
    args += ["-bf", str(bframes), "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(args, check=True, timeout=300)
    return path


def make_mid_gop_ts(path: Path) -> Path:
    """An MPEG-TS recording that starts in the middle of a GOP (its first bytes cut off, as a
    capture started late): ffprobe lists packets a decoder cannot use (no keyframe, no SPS
    before them), so no split can hold the frames the packets promise."""
    if not path.exists():
        whole = path.with_suffix(".whole.ts")
        inputs = ["-f", "lavfi", "-i", "testsrc2=s=160x90:r=25:d=12", "-f", "lavfi", "-i", "sine"]
        codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-c:a", "aac"]
        argv = ["ffmpeg", "-v", "error", "-y", *inputs, *codecs, "-shortest", str(whole)]
        subprocess.run(argv, check=True, timeout=120)
        data = whole.read_bytes()
        path.write_bytes(data[len(data) // 7 // 188 * 188 :])
    return path


def decoded_frames(path: Path) -> int:
    """Frames a decoder shows (what a viewer sees) of a file or a rendition's playlist, counted
    by ffprobe."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # an HLS playlist lists its stream twice (in its program and on its own): the first count
    return int(out.stdout.split()[0])


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly (sample media for a test), overwriting its output."""
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    subprocess.run(command, check=True, timeout=120)


def ffprobe(path_or_url: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", path_or_url],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(out.stdout)


# --- the CLI -------------------------------------------------------------------------------------
def encodeq(
    *args: str, timeout: float = 300, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ENCODEQ, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env={**os.environ, **(env or {})},
    )


def upload_job(path: Path, *options: str, env: dict[str, str] | None = None) -> str:
    """``encodeq upload PATH``: the job id, without waiting for the job."""
    result = encodeq("upload", str(path), *options, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def upload_and_wait(
    *paths: Path, options: tuple[str, ...] = (), timeout: float = 240
) -> list[dict]:
    """``encodeq upload --wait --json``: the final manifest of every job."""
    result = encodeq(
        "upload",
        *map(str, paths),
        "--wait",
        "--json",
        "--timeout",
        str(timeout),
        *options,
        timeout=timeout + 60,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    doc = json.loads(result.stdout)
    return doc if isinstance(doc, list) else [doc]


def download_rendition(playlist_uri: str, into: Path) -> Path:
    """Copy a rendition (playlist and segments) out of storage; returns the local playlist."""
    from core.layout import RENDITIONS
    from core.storage import parse_uri

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
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.pid)], capture_output=True, text=True
        )
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
        queues: tuple[str, ...] = (CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME),
    ) -> Worker:
        """``encodeq worker`` as compose runs it (or ``argv`` exactly as given, e.g. compose's own
        command line); returns once it consumes from its work queues (``queues``: both)."""
        url = (env or {}).get("ENCODEQ_BROKER_URL")
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"encodeq-worker-{name}-{os.getpid()}.log"
        argv = argv or [
            "encodeq",
            "worker",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
            "--loglevel",
            "INFO",
            "--queues",
            ",".join(queues),
        ]
        program = ENCODEQ[0] if argv[0] == "encodeq" else (shutil.which(argv[0]) or argv[0])
        proc = subprocess.Popen(
            [program, *argv[1:]],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        worker = Worker(name, proc, log)
        self.workers.append(worker)

        def consuming() -> bool:
            # Celery logs "<node> ready." once its consumer is set up; the broker then shows a
            # consumer on each queue. Not "more consumers than before": right after a whole
            # worker is killed, the broker may still count the dead one in "before".
            if proc.poll() is not None:
                return True
            ready = any(line.rstrip().endswith(" ready.") for line in worker.output().splitlines())
            return ready and all(consumers(q, url) > 0 for q in queues)

        wait_for(consuming, 60, f"worker {name} to consume from the work queues")
        if proc.poll() is not None:
            raise AssertionError(f"worker {name} exited:\n{worker.output()[-3000:]}")
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.terminate(timeout=30)


# --- processes on this machine (read from /proc) -------------------------------------------------
def _proc_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, T, Z...), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def processes_with(fragment: str, program: str | None = None, also: str = "") -> list[int]:
    """Pids of live processes with an argument containing ``fragment`` (and one containing
    ``also``), whose program is ``program`` when given: e.g. the ffmpeg of a scratch folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            argv = [a.decode(errors="replace") for a in raw.split(b"\0")]
        except OSError:
            continue
        argv = [a for a in argv if a]
        if not argv or _proc_state(int(entry.name)) in (None, "Z"):
            continue
        if program is not None and os.path.basename(argv[0]) != program:
            continue
        if any(fragment in a for a in argv) and any(also in a for a in argv):
            found.append(int(entry.name))
    return found


def hold_ffmpeg(fragment: str, timeout: float = 120, also: str = "") -> int:
    """SIGSTOP the first running ffmpeg with an argument containing ``fragment`` (and ``also``):
    held, it cannot finish before the test acts, however fast or slow the machine. Its pid."""

    def held() -> int | None:
        for pid in processes_with(fragment, "ffmpeg", also):
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while (state := _proc_state(pid)) not in ("T", "t", "Z", None):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            if state in ("T", "t"):  # stopped, not exiting
                return pid
        return None

    return wait_for(held, timeout, f"an ffmpeg of {fragment}", every=0.02)


def kill_processes_with(fragment: str) -> None:
    """SIGKILL whatever still runs with ``fragment`` in its arguments (a test's cleanup)."""
    import contextlib

    for pid in processes_with(fragment):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


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
        [*ENCODEQ, "dlq", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


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
        ch.queue_declare(
            name,
            durable=True,
            auto_delete=False,
            arguments={"x-dead-letter-exchange": "encodeq.dlx"},
        )
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
        "application_headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "retries": 0,
            "argsrepr": f"('{job}',)",
            **headers,
        },
    }
    return body, props


def kill_into_dlq(queue: str, messages: list[tuple[bytes, dict]]) -> None:
    """Publish to ``queue`` and reject each without requeue: real dead letters, reason rejected."""
    _publish_and_reject("", queue, queue, messages)


def _publish_and_reject(
    exchange: str, routing_key: str, queue: str, messages: list[tuple[bytes, dict]]
) -> int:
    """Publish each message, then take as many from ``queue`` and reject them (no requeue)."""
    import amqp

    with broker() as conn:
        ch = conn.connection.channel()
        for body, props in messages:
            ch.basic_publish(amqp.Message(body, **props), exchange, routing_key)
        rejected = 0
        while rejected < len(messages):
            got = ch.basic_get(queue, no_ack=False)
            if got is None:
                continue
            ch.basic_reject(got.delivery_tag, requeue=False)
            rejected += 1
        ch.close()
    return rejected


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
    """An ``encodeq serve`` subprocess, where it answers and its token (``ENCODEQ_API_TOKEN``, or
    the one it generated and printed in its ``#token=`` link)."""

    def __init__(self, proc: subprocess.Popen, base: str, log: Path) -> None:
        self.proc, self.base, self.log = proc, base, log
        self.token = ""
        self.link: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        """The header every ``/api/*`` call but health needs."""
        return {"Authorization": f"Bearer {self.token}"}

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
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def start_server(
    argv: list[str] | None = None, env: dict[str, str] | None = None, port: int | None = None
) -> Server:
    """``encodeq serve`` (or ``argv`` exactly as given); returns once it answers and follows the
    events exchange."""
    from console.s3server import free_port

    port = port or free_port()
    argv = argv or ["encodeq", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"encodeq-serve-{port}-{os.getpid()}.log"
    program = ENCODEQ[0] if argv[0] == "encodeq" else argv[0]
    proc = subprocess.Popen(
        [program, *argv[1:]],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
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
    import re

    token = {**os.environ, **(env or {})}.get("ENCODEQ_API_TOKEN", "")
    found = re.search(r"(http://\S+/)#token=(\S+)", server.output())
    if found:  # printed before uvicorn starts: there once /api/health answers
        server.link, server.token = found.group(0), found.group(2)
    else:
        server.token = token
    return server


def event_queues() -> list[str]:
    """Names of the private queues subscribed to ``encodeq.events`` in this run's vhost."""
    vhost = settings().broker_url.rsplit("/", 1)[1]
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
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
        "s3",
        endpoint_url=s.s3_endpoint,
        aws_access_key_id=s.s3_access_key,
        aws_secret_access_key=s.s3_secret_key,
        region_name=s.s3_region,
    )
    bucket = s.bucket(logical)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    rule = {
        "AllowedOrigins": ["*"],
        "AllowedMethods": ["GET", "HEAD"],
        "AllowedHeaders": ["*"],
        "MaxAgeSeconds": 3600,
    }
    client.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule]})


# --- DLQ tests on a broker of their own (tests/test_dlq_replay.py, tests/test_dlq_purge.py) -------
def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def private_vhost(name: str) -> Iterator[str]:
    """A RabbitMQ vhost of its own, made this process's (and its subprocesses') broker while in
    use: its work queues hold nobody else's messages, so a test may kill messages in them and
    count what arrives where. Yields its URL. The process-wide settings are read again on the way
    in and out, so nothing in this process keeps the URL of a vhost that no longer exists."""
    import uuid

    from config.settings import get_settings

    base = settings().broker_url.rsplit("/", 1)[1]
    vhost = f"{base}-{name}-{uuid.uuid4().hex[:6]}"
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    previous = os.environ.get("ENCODEQ_BROKER_URL")
    os.environ["ENCODEQ_BROKER_URL"] = url
    get_settings.cache_clear()
    try:
        yield url
    finally:
        if previous is None:
            os.environ.pop("ENCODEQ_BROKER_URL", None)
        else:
            os.environ["ENCODEQ_BROKER_URL"] = previous
        get_settings.cache_clear()
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60
        )


def kill_in_work_queue(routing_key: str, messages: list[tuple[bytes, dict]]) -> str:
    """Publish through the work exchange and reject each from the work queue it reached: dead
    letters whose x-death names that queue, the work exchange and the routing key, as a worker's
    reject leaves them. On a private vhost only (it rejects whatever the queue holds). Returns
    the queue's name."""
    from config.topology import TASK_ROUTES, WORK_EXCHANGE, declare_topology

    queue = next(q for q, key in TASK_ROUTES.values() if key == routing_key)
    before = queue_state(DEAD_LETTER_QUEUE_NAME)[0]
    with broker() as conn:
        declare_topology(conn)
    rejected = _publish_and_reject(WORK_EXCHANGE.name, routing_key, queue, messages)
    # Quorum queues dead-letter at least once, through their own process: wait for the copies.
    wanted = before + rejected
    wait_for(lambda: queue_state(DEAD_LETTER_QUEUE_NAME)[0] >= wanted, 30, "the dead letters")
    return queue
