"""What the worker lessons share: worker processes in the scratch space, a tiny source video,
waiting for a condition, and every event a lesson subscribed to.

Workers are started as compose starts them (``python -m worker``), or as the lessons' drill
worker (console/learn/drill_worker.py: the same worker app with the lessons' tasks), each in a
process group of its own, so a lesson can SIGKILL one with its pool at once, and every one still
running is stopped when the lesson ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kombu import Connection

from console.learn.broker_admin import QueueCounts, admin_for
from console.learn.lesson import LessonContext
from console.waiting import wait_for as wait_until
from core.events import EventSubscription
from core.queue_depths import queue_depths

#: A worker has this long to consume (two cold starts at once on two cores take about ten).
WORKER_START_S = 90.0
#: Warm shutdown: the task in hand finishes; after this the process group is killed.
WORKER_STOP_S = 20.0
#: What makes lesson encodes fast: the fastest x264 preset, short segments.
FAST_ENCODES = {"ENCODEQ_X264_PRESET": "ultrafast", "ENCODEQ_SEGMENT_SECONDS": "1"}


def vhost_of(broker_url: str) -> str:
    path = broker_url.split(";")[0].split("?")[0].rsplit("/", 1)[-1]
    return path.replace("%2F", "/").replace("%2f", "/") or "/"


def queue_counts(broker_url: str) -> dict[str, QueueCounts]:
    """Every queue of the scratch vhost as RabbitMQ counts it: ready, unacked, consumers."""
    return admin_for(broker_url).queues(vhost_of(broker_url))


def consumers(broker_url: str, queue: str) -> int:
    """Consumers of ``queue`` now, by a passive declare (0 while it does not exist)."""
    with Connection(broker_url) as connection:
        [depth] = queue_depths(connection, (queue,))
    return depth.consumers or 0


class LessonWorker:
    """One worker process (its group: its pool, its forked nodes, its ffmpeg)."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log

    def kill(self) -> None:
        """SIGKILL the whole worker at once, as a lost host or an OOM kill would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown, then whatever is left of its group is killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=WORKER_STOP_S)
        self.kill()

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Fleet:
    """The workers of one lesson: ``with Fleet(context) as fleet:``; all stopped at the end."""

    def __init__(self, context: LessonContext) -> None:
        self.context = context
        self.workers: list[LessonWorker] = []
        self.folder = (context.workdir or Path(tempfile.gettempdir())) / "logs"

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, *_: object
    ) -> None:
        for worker in self.workers:
            worker.stop()
        if isinstance(error, Exception):  # what the workers said is the first thing to read
            for worker in self.workers:
                error.add_note(f"--- worker {worker.name}, last lines of its log:\n{worker.tail()}")

    def start(
        self,
        name: str,
        module: str = "worker",
        env: dict[str, str] | None = None,
        options: tuple[str, ...] = (),
    ) -> LessonWorker:
        """``python -m MODULE --concurrency 1 --hostname NAME@%h OPTIONS`` in the scratch space
        (returns at once; ``wait_consuming`` waits for it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / f"{name}.log"
        argv = [sys.executable, "-m", module, "--concurrency", "1", "--hostname", f"{name}@%h"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*argv, *options],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **FAST_ENCODES, **self.context.env, **(env or {})},
                start_new_session=True,
            )
        worker = LessonWorker(name, proc, log)
        self.workers.append(worker)
        return worker

    def wait_consuming(self, queue: str, count: int) -> None:
        """Until ``queue`` has ``count`` consumers; a worker that exits meanwhile is an error."""

        def ready() -> bool:
            for worker in self.workers:
                if worker.proc.poll() is not None and worker.proc.returncode != -signal.SIGKILL:
                    raise RuntimeError(f"worker {worker.name} exited:\n{worker.tail()}")
            return consumers(self.context.broker_url, queue) >= count

        wait_until(ready, WORKER_START_S, f"{count} consumer(s) on {queue}", every=0.25)

    def holding(self, hostname: str) -> LessonWorker:
        """The worker a Celery node name (``name@host``, ``name@host.control``) belongs to."""
        name = hostname.split("@")[0]
        return next(w for w in self.workers if w.name == name)


def make_clip(path: Path, size: str = "320x180", seconds: float = 1.0, audio: bool = False) -> Path:
    """A short H.264 test pattern (ffmpeg's lavfi), made in a moment."""
    args = ["-f", "lavfi", "-i", f"testsrc2=s={size}:r=25:d={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=f=440:d={seconds}", "-c:a", "aac", "-shortest"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p"]
    argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args, str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not make {path.name}: {done.stderr.strip()[-300:]}")
    return path


def upload(context: LessonContext, *paths: Path, mode: str | None = None) -> list[str]:
    """``encodeq upload PATH...`` as a user runs it, in the scratch space: the job ids."""
    argv = [sys.executable, "-m", "console.cli", "upload", *map(str, paths)]
    argv += ["--mode", mode] if mode else []
    env = {**os.environ, **context.env}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"encodeq upload failed: {done.stderr.strip()[-500:]}")
    return done.stdout.split()


class EventLog:
    """Every event the lesson's own subscription received (a private queue of its own on
    ``encodeq.events``, like every subscriber), kept in arrival order."""

    def __init__(self, broker_url: str, keys: tuple[str, ...] = ("#",)) -> None:
        self._connection = Connection(broker_url, heartbeat=0)
        self._subscription = EventSubscription(self._connection, keys)
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> EventLog:
        self._connection.ensure_connection(max_retries=3)
        self._subscription.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._subscription.__exit__(*exc)
        self._connection.release()

    def pump(self, timeout: float = 0.1) -> list[dict[str, Any]]:
        new = list(self._subscription.events(timeout=timeout))
        self.events += new
        return new

    def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict:
        """The first event (received so far or from now on) that ``match``es."""

        def found() -> dict[str, Any] | None:
            self.pump()
            return next((e for e in self.events if match(e)), None)

        return wait_until(found, timeout, what, every=0)

    def of(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]
