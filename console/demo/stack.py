"""What the demo starts and stops: its folder, S3 (embedded when none answers), the broker
connection, the workers, and the signal handling that makes sure all of it is stopped again.

Every resource is registered on the run's ExitStack as it is started, so whatever happens after
(an error, Ctrl-C, SIGTERM) they are stopped in reverse order: workers, then S3, then files.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kombu import Connection
from rich.console import Console
from rich.markup import escape

from config.retry_policy import broker_retry
from config.settings import Settings, get_settings
from config.topology import ENCODE_QUEUE_NAME, declare_topology
from console.s3server import EmbeddedS3, answers
from core.queue_depths import queue_depths

DEMO_DIR = Path("encodeq-demo")
#: The demo's workers encode chunks this long (fixed, whatever the fleet), so the same 12 s
#: sample shows chunked mode the same way every time: three chunks, in parallel, then joined.
DEMO_CHUNK_SECONDS = 4
WORKER_START_TIMEOUT_S = 90.0
#: Warm shutdown lets a worker finish the task in hand; after this it is killed (process group).
WORKER_STOP_TIMEOUT_S = 20.0


class DemoError(Exception):
    """Something the demo needs is missing or broke; the message tells the user what."""


@dataclass
class DemoWorker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def check_tools() -> None:
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise DemoError(f"{tool} is not installed (Debian/Ubuntu: apt-get install ffmpeg)")


def demo_folder(
    keep: bool, stack: ExitStack, succeeded: Callable[[], bool], console: Console
) -> Path:
    """./encodeq-demo with --keep, else a temp folder removed at the end (kept when a run with
    workers failed, so their logs can be read)."""
    if keep:
        DEMO_DIR.mkdir(exist_ok=True)
        return DEMO_DIR.resolve()
    folder = Path(tempfile.mkdtemp(prefix="encodeq-demo-"))

    def cleanup() -> None:
        if succeeded() or not any(folder.glob("worker-*.log")):
            shutil.rmtree(folder, ignore_errors=True)
        else:
            console.print(f"[dim]demo files and worker logs kept in {folder}", highlight=False)

    stack.callback(cleanup)
    return folder


def ensure_storage(stack: ExitStack, console: Console) -> bool:
    """Use the configured S3 endpoint if it answers; else start an embedded one for this run.

    The endpoint goes into ``os.environ`` (the workers inherit it) and the settings cache is
    cleared; every Storage is built after this (nothing keeps the endpoint from import time).
    Returns True if embedded.
    """
    endpoint = get_settings().s3_endpoint
    if answers(endpoint):
        console.print(f"  using the S3 server at {escape(endpoint)}", highlight=False)
        return False
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request log
    server = EmbeddedS3()
    new_endpoint = server.start()
    stack.callback(server.stop)
    os.environ["ENCODEQ_S3_ENDPOINT"] = new_endpoint
    get_settings.cache_clear()
    console.print(
        f"  nothing answers at {escape(endpoint)}: started an embedded S3 server at"
        f" {new_endpoint} for this run",
        highlight=False,
        soft_wrap=True,
    )
    return True


def connect_broker(settings: Settings, stack: ExitStack, console: Console) -> Connection:
    """A connection for the run, the topology declared (before anything publishes or counts
    consumers); one retry on the shared broker schedule, then a clear error."""
    broker = stack.enter_context(Connection(settings.broker_url, connect_timeout=5))
    try:
        broker.ensure_connection(**broker_retry(max_retries=1))
    except Exception as exc:
        raise DemoError(f"RabbitMQ does not answer at {broker.as_uri()}: {exc}") from None
    declare_topology(broker)
    console.print(f"  RabbitMQ at {escape(broker.as_uri())}, queues declared", highlight=False)
    return broker


def consumers(broker: Connection) -> int:
    """Workers consuming the encode queue right now."""
    return queue_depths(broker, (ENCODE_QUEUE_NAME,))[0].consumers or 0


def start_workers(count: int, folder: Path, stack: ExitStack, console: Console) -> list[DemoWorker]:
    """``python -m worker --concurrency 1`` processes (the command ``encodeq worker`` mounts), each
    in its own process group (so stopping one reaches its pool and any ffmpeg), logging to files
    in the demo folder."""
    fleet: list[DemoWorker] = []
    stack.callback(stop_workers, fleet, console)  # registered first: stops even a partial fleet
    host = socket.gethostname()
    for index in range(1, count + 1):
        name = f"demo-{index}"
        log = folder / f"worker-{name}.log"
        argv = [sys.executable, "-m", "worker", "--concurrency", "1"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*argv, "--hostname", f"{name}@%h"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ENCODEQ_CHUNK_SECONDS": str(DEMO_CHUNK_SECONDS)},
                start_new_session=True,
            )
        fleet.append(DemoWorker(name, proc, log))
        console.print(
            f"  started worker {name}@{host} (pid {proc.pid}), log {escape(str(log))}",
            highlight=False,
            soft_wrap=True,
        )
    return fleet


def wait_for_consumers(broker: Connection, expected: int, fleet: list[DemoWorker]) -> None:
    """Until ``expected`` consumers are on the encode queue; a worker that exits is an error."""
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while consumers(broker) < expected:
        for w in fleet:
            if w.proc.poll() is not None:
                raise DemoError(f"worker {w.name} exited at start:\n{w.log_tail()}")
        if time.monotonic() > deadline:
            raise DemoError(f"workers did not consume within {WORKER_START_TIMEOUT_S:.0f}s")
        time.sleep(0.25)


def stop_workers(fleet: list[DemoWorker], console: Console) -> None:
    """SIGTERM (warm shutdown), then SIGKILL to the whole process group after a bound."""
    running = [w for w in fleet if w.proc.poll() is None]
    if not running:
        return
    with signals_ignored():  # a second Ctrl-C must not leave workers behind
        console.print(f"\n[dim]stopping {len(running)} worker(s)")
        for w in running:
            w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for w in running:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                console.print(f"[yellow]  {w.name} did not stop in time: killing it")
            # Anything left in its group (a pool child, an ffmpeg) goes too.
            with suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGKILL)
            w.proc.wait(timeout=30)


# --- signals -------------------------------------------------------------------------------------
def sigterm_as_interrupt() -> Any:
    """Make SIGTERM unwind like Ctrl-C, so the finally blocks stop the workers and the S3 server.
    Returns the previous handler (None when not on the main thread, where it cannot be set)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt) or signal.SIG_DFL
    except ValueError:
        return None


@contextmanager
def signals_ignored() -> Iterator[None]:
    try:
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
