"""The one worker fleet: worker processes started as compose starts them, for tests and benches.

A worker is its own process group (``start_new_session``), so a test can SIGKILL it with its pool
and ffmpeg children at once; ``stop_all`` stops whatever is still running, warm.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from config.topology import CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME, with_lanes
from support.broker import consumers
from support.commands import WORKER_COMMAND, log_path, resolve, upload_job
from support.waiting import wait_for

WORK_QUEUES = (CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME)


def worker_argv(
    name: str, concurrency: int = 1, queues: tuple[str, ...] = WORK_QUEUES, loglevel: str = "INFO"
) -> list[str]:
    """The worker's command line as compose's, with a node name and the queues to consume."""
    options = ["--concurrency", str(concurrency), "--hostname", f"{name}@%h"]
    return [*WORKER_COMMAND, *options, "--loglevel", loglevel, "--queues", ",".join(queues)]


class Worker:
    """One worker process (its main process; the pool processes are its children)."""

    def __init__(self, name: str, proc: subprocess.Popen, log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.pid)], capture_output=True, text=True
        )
        return [int(p) for p in out.stdout.split()]

    def node(self, name: str) -> int | None:
        """Pid of a node the worker forked (``control``, ``high``, ``bulk``: it names itself
        ``encodeq-<name>``, worker/nodes.py), if it runs."""
        for pid in self.children():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == f"encodeq-{name}":
                    return pid
        return None

    def control_node(self) -> int | None:
        return self.node("control")

    def forked_nodes(self) -> list[int]:
        """Every node the worker forked beside its own."""
        return [pid for pid in self.children() if _comm(pid).startswith("encodeq-")]

    def control_tree(self) -> list[int]:
        """The control node and its pool processes ([] without a control node)."""
        control = self.control_node()
        if control is None:
            return []
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(control)], capture_output=True, text=True
        )
        return [control, *(int(p) for p in out.stdout.split())]

    def pool_children(self) -> list[int]:
        """Pids of the prefork pool processes of the worker's own node (the express lane, where
        short jobs encode): its children that are not nodes it forked."""
        forked = set(self.forked_nodes())
        return [pid for pid in self.children() if pid not in forked]

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
    """Workers started by a test or a benchmark; ``stop_all`` stops every one still running."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []

    def start(
        self,
        name: str,
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
        queues: tuple[str, ...] = WORK_QUEUES,
        prefix: tuple[str, ...] = (),
    ) -> Worker:
        """The worker as compose runs it (or ``argv`` exactly as given, e.g. compose's own
        command line), behind ``prefix`` (e.g. ``taskset -c 0``); returns once it consumes from
        its work queues (``queues``: both)."""
        url = (env or {}).get("ENCODEQ_BROKER_URL")
        log = log_path(f"worker-{name}")
        command = [*prefix, *resolve(argv or worker_argv(name, concurrency, queues))]
        proc = subprocess.Popen(
            command,
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
            # A node per queue (each lane its own): every one of them ready, not just the first
            # (another worker's consumer on a queue would pass the broker's count for it).
            nodes = with_lanes(list(queues))
            lines = worker.output().splitlines()
            ready = sum(line.rstrip().endswith(" ready.") for line in lines) >= len(nodes)
            return ready and all(consumers(q, url) > 0 for q in nodes)

        wait_for(consuming, 60, f"worker {name} to consume from the work queues")
        if proc.poll() is not None:
            raise AssertionError(f"worker {name} exited:\n{worker.output()[-3000:]}")
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.terminate(timeout=30)


@contextmanager
def worker_fleet(
    count: int, env: dict[str, str] | None = None, pin: bool = False
) -> Iterator[WorkerFleet]:
    """``count`` workers of one process each (each pinned to its own core with ``taskset`` when
    ``pin``), consuming before the block starts, stopped warm after it (the benches' fleet)."""
    fleet = WorkerFleet()
    cores = os.cpu_count() or 1
    try:
        for i in range(count):
            prefix = ("taskset", "-c", str(i % cores)) if pin else ()
            fleet.start(f"bench{i}", env=env, prefix=prefix)
        yield fleet
    finally:
        fleet.stop_all()


# --- processes on this machine (read from /proc) -------------------------------------------------
def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def proc_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, T, Z...), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live process below it (a worker, its forked nodes, their pools)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = parent_of(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return [p for p in tree if proc_state(p) not in (None, "Z")]


def worker_holding(pid: int, workers: dict[int, str]) -> str:
    """Which of ``workers`` (pid -> name) runs ``pid`` somewhere in its process tree."""
    while pid > 1:
        if pid in workers:
            return workers[pid]
        pid = parent_of(pid)
    raise AssertionError(f"process {pid} belongs to none of {sorted(workers.values())}")


def argv_of(pid: int) -> list[str]:
    """A live process's arguments ([] once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes_with(fragment: str, program: str | None = None, also: str = "") -> list[int]:
    """Pids of live processes with an argument containing ``fragment`` (and one containing
    ``also``), whose program is ``program`` when given: e.g. the ffmpeg of a scratch folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [a for a in (part.decode(errors="replace") for part in raw.split(b"\0")) if a]
        if not argv or proc_state(int(entry.name)) in (None, "Z"):
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
            while (state := proc_state(pid)) not in ("T", "t", "Z", None):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            if state in ("T", "t"):  # stopped, not exiting
                return pid
        return None

    return wait_for(held, timeout, f"an ffmpeg of {fragment}", every=0.02)


@contextmanager
def held_ffmpeg(fragment: str, timeout: float = 120, also: str = "") -> Iterator[int]:
    """``hold_ffmpeg`` for the block: its pid, resumed (SIGCONT) when the block ends, however it
    ends, so a failing test never leaves an ffmpeg stopped."""
    pid = hold_ffmpeg(fragment, timeout, also)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def kill_processes_with(fragment: str) -> None:
    """SIGKILL whatever still runs with ``fragment`` in its arguments (a test's cleanup)."""
    for pid in processes_with(fragment):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def slow_motion(pids: list[int], share: float = 0.1) -> Iterator[None]:
    """Run stopped processes at ``share`` of their speed for the block (SIGCONT, SIGSTOP in
    turns), stopped again after it: they progress, but cannot finish before the test acts."""
    done = threading.Event()

    def crawl() -> None:
        while not done.is_set():
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            time.sleep(0.5 * share)
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            done.wait(0.5 * (1 - share))

    thread = threading.Thread(target=crawl, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def held_encode(events: Any, source: Path) -> tuple[str, dict[str, Any]]:
    """Upload ``source`` per-rung, wait on ``events`` (a ``support.events.Events`` subscribed to
    ``task.*``) for its encode's start and hold that encode's ffmpeg: the job id and the
    ``task.started`` event (its ``pid`` is the pool process running the encode)."""
    job_id = upload_job(source, "--mode", "per-rung")
    started = events.wait(
        lambda e: (
            e["event"] == "task.started" and e["task"] == "encode" and e.get("job_id") == job_id
        ),
        60,
        "the encode's start",
    )
    hold_ffmpeg(job_id)
    return job_id, started
