"""The workers of ``encodeq up``: started, watched, restarted, scaled, killed on purpose.

Each worker is the same command an operator runs, ``python -m worker --concurrency 1 --hostname
wN@HOST`` (what ``encodeq worker`` mounts), in its own process group, so a SIGKILL of the group
takes its nodes and pool with it (ffmpeg dies with its parent: worker/process.py). One thread
converges the fleet on its target every tick: it starts the missing workers, warm-stops the
extra ones (SIGTERM: the task in hand finishes, or goes back to the queue when the worker is cut
short), and restarts one that died without being asked to, after a backoff, so a worker that
cannot start does not spin. The supervisor only looks at processes; whether a worker really
consumes is the broker's to say (``consumers`` in ``describe``).

Only the supervisor's thread starts and stops workers (the others set the target), and every
worker runs under ``setpriv --pdeathsig TERM``: if ``up`` itself dies, even by SIGKILL, the
kernel tells its workers to stop warm instead of leaving them consuming with nobody to stop them.
The death signal follows the thread that forked, so that thread lives until they are stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.topology import ENCODE_QUEUE_NAME
from uploader.web.fleet import FleetError

log = logging.getLogger(__name__)

#: Every worker's nodes log this when they consume (worker/nodes.py: control, high, express,
#: bulk); a worker is "running" once all of them did.
NODES_PER_WORKER = 4
TICK_S = 0.5
#: A worker that died unasked is restarted after this, doubling while it keeps dying young.
RESTART_BACKOFF_S, MAX_BACKOFF_S = 2.0, 60.0
#: A worker that ran this long before it died starts again with the shortest backoff.
HEALTHY_AFTER_S = 60.0
#: Warm shutdown lets the task in hand finish; after this the worker's group is killed.
STOP_TIMEOUT_S = 30.0
#: util-linux: the kernel sends SIGTERM to the worker when the thread that started it ends.
DIE_WITH_UP = ("setpriv", "--pdeathsig", "TERM", "--") if shutil.which("setpriv") else ()


@dataclass
class ManagedWorker:
    name: str
    log: Path
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    #: starting | running | stopping | killed | exited
    state: str = "starting"
    restarts: int = 0
    restart_at: float | None = None
    #: Where this run's output starts in the log (a restarted worker appends to it).
    log_offset: int = 0

    @property
    def hostname(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    def ready(self) -> bool:
        """All its nodes logged "ready." (Celery's line once a node consumes)."""
        try:
            with self.log.open("rb") as log:
                log.seek(self.log_offset)
                return log.read().count(b" ready.") >= NODES_PER_WORKER
        except OSError:
            return False

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hostname": self.hostname,
            "pid": self.proc.pid,
            "state": self.state,
            "restarts": self.restarts,
            "log": str(self.log),
        }


class Supervisor:
    """The fleet of one ``encodeq up``; ``consumers()`` asks the broker who consumes."""

    def __init__(
        self,
        log_dir: Path,
        env: dict[str, str],
        consumers: Callable[[], dict[str, int | None] | None],
    ) -> None:
        self.log_dir = log_dir
        self.env = env
        self.consumers = consumers
        self.target = 0
        self._stop_timeout = STOP_TIMEOUT_S
        self.workers: list[ManagedWorker] = []
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="encodeq-supervisor", daemon=True)

    # --- what the page and ``encodeq scale`` ask ---------------------------------------------
    def start(self, workers: int, timeout: float = STOP_TIMEOUT_S) -> None:
        self.target, self._stop_timeout = workers, timeout
        self._thread.start()

    def scale(self, workers: int) -> dict[str, Any]:
        """The target; the supervisor's next tick starts or warm-stops workers to meet it."""
        with self._lock:
            self.target = workers
        return {"target": workers}

    def kill(self, name: str) -> dict[str, Any]:
        """SIGKILL the whole group: no warm shutdown, no ack for the task in hand."""
        with self._lock:
            worker = next((w for w in self.workers if w.name == name), None)
            if worker is None or worker.proc.poll() is not None:
                raise FleetError(404, "unknown_worker", f"no running worker {name}")
            with suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGKILL)
            leaving = worker.state == "stopping"  # on its way out anyway: not restarted
            if not leaving:
                worker.state = "killed"
                worker.restart_at = time.monotonic() + self._backoff(worker)
        with suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=10)  # outside the lock: the tick and describe go on
        restart = None if leaving else self._backoff(worker)
        return {"killed": name, "pid": worker.proc.pid, "restart_in_s": restart}

    def describe(self) -> dict[str, Any]:
        """The workers, and the consumers the broker counts: of the encode queue (the page's
        figure) and of every work queue (``encodeq scale`` waits until each has the target)."""
        with self._lock:
            workers = [w.as_json() for w in self.workers]
        by_queue = self.consumers()
        return {
            "target": self.target,
            "workers": workers,
            "consumers": None if by_queue is None else by_queue.get(ENCODE_QUEUE_NAME),
            "consumers_by_queue": by_queue,
        }

    # --- the loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    try:
                        self._reap()
                        self._converge()
                    except Exception:  # a spawn that failed (no disk, no descriptors): next tick
                        log.exception("encodeq up: supervising the workers failed; retrying")
                if self._stopping.wait(TICK_S):
                    break
        finally:  # this thread's end sends the workers SIGTERM anyway (pdeathsig): stop them
            self._stop_all()

    def _reap(self) -> None:
        now = time.monotonic()
        for w in list(self.workers):
            code = w.proc.poll()
            if code is None:
                if w.state == "starting" and w.ready():
                    w.state = "running"
                continue
            if w.state == "stopping":
                self.workers.remove(w)  # asked to go, and gone
            elif w.state in ("starting", "running"):
                w.state = "exited"  # died unasked: restart after a backoff
                w.restart_at = now + self._backoff(w)
            elif w.restart_at is not None and now >= w.restart_at:
                self._restart(w)

    def _converge(self) -> None:
        live = [w for w in self.workers if w.state != "stopping"]
        for w in sorted(live, key=_index)[self.target :]:
            self._stop(w)
        taken = {_index(w) for w in self.workers}  # a stopping w2 still holds its name
        missing = self.target - len(live)
        index = 1
        while missing > 0:
            if index not in taken:
                self.workers.append(self._spawn(f"w{index}"))
                missing -= 1
            index += 1

    def _backoff(self, w: ManagedWorker) -> float:
        if time.monotonic() - w.started >= HEALTHY_AFTER_S:
            return RESTART_BACKOFF_S
        return min(MAX_BACKOFF_S, RESTART_BACKOFF_S * 2**w.restarts)

    def _restart(self, w: ManagedWorker) -> None:
        fresh = self._spawn(w.name)
        fresh.restarts = w.restarts + 1
        self.workers[self.workers.index(w)] = fresh

    def _spawn(self, name: str) -> ManagedWorker:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        argv = [sys.executable, "-m", "worker", "--concurrency", "1", "--hostname", f"{name}@%h"]
        argv = [*DIE_WITH_UP, *argv]
        with log_path.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            offset = out.tell()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return ManagedWorker(name, log_path, proc, log_offset=offset)

    def _stop(self, w: ManagedWorker) -> None:
        """Warm: SIGTERM to the worker (it forwards to its nodes); reaped when it has exited."""
        w.state = "stopping"
        if w.proc.poll() is None:
            with suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)

    # --- shutdown -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Every worker, warm (the supervisor's thread does it, then ends)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _stop_all(self) -> None:
        """SIGTERM to all; what has not exited by the timeout is killed with its group."""
        with self._lock:
            for w in self.workers:
                self._stop(w)
            deadline = time.monotonic() + self._stop_timeout
            for w in self.workers:
                with suppress(subprocess.TimeoutExpired):
                    w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                with suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait(timeout=30)
            self.workers.clear()


def _index(w: ManagedWorker) -> int:
    return int(w.name.lstrip("w"))
