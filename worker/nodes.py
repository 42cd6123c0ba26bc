"""A worker's nodes: one Celery node per work queue it consumes, the others forked from it.

Why a node per queue: prefetch is per consumer on quorum queues, so a node consuming several
queues holds a message of each while every process is busy with one of them; a probe would wait
for an encode to end, a clip for a long job's chunk, while another worker idles. Nodes of one
queue each hold only what they can start. The control node runs probes, joins, finalize and the
straggler watchdog; each encode lane (worker/lanes.py) has a node at the lane's niceness, so
under contention the urgent lane gets the cores at once.

The worker's own process runs the express lane (or its one queue); the others are forked once
everything is imported and before anything connects (so they start in no time and share no
connection), die with the worker (parent-death signal: a SIGKILLed worker takes them with it, as
a lost host would), and get the worker's own shutdown signal (a warm shutdown stays warm on all).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import signals

from config.settings import Settings, get_settings
from config.topology import (
    CONTROL_QUEUE_NAME,
    ENCODE_EXPRESS_QUEUE_NAME,
    NODE_SUFFIXES,
    OTHER_NODE_SUFFIX,
    with_lanes,
)
from worker.lanes import niceness

#: prctl(2) options: the signal this process gets when its parent dies; its name (``comm``).
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

#: ``run(concurrency, loglevel, hostname, queue)``: a Celery worker node in this process.
NodeRunner = Callable[[int, str, str, str], None]


@dataclass(frozen=True)
class Node:
    queue: str
    concurrency: int
    nice: int
    #: The one node of a worker that runs the janitor (worker/janitor.py): the control node, else
    #: the worker's own.
    janitor: bool = False


def plan(queues: list[str], concurrency: int, settings: Settings) -> tuple[Node, list[Node]]:
    """The worker's own node and the nodes it forks: one per queue (the express lane, else the
    first queue, in the worker's own process: it is where short jobs, and most tests, run)."""
    wanted = with_lanes(queues)
    own_queue = ENCODE_EXPRESS_QUEUE_NAME if ENCODE_EXPRESS_QUEUE_NAME in wanted else wanted[0]
    keeper = CONTROL_QUEUE_NAME if CONTROL_QUEUE_NAME in wanted else own_queue
    nodes = [
        Node(
            q,
            settings.control_concurrency if q == CONTROL_QUEUE_NAME else concurrency,
            niceness(q, settings),
            janitor=q == keeper,
        )
        for q in wanted
    ]
    own = next(n for n in nodes if n.queue == own_queue)
    return own, [n for n in nodes if n is not own]


def enter(node: Node) -> None:
    """This process is ``node`` from now on: its niceness, and the settings its tasks read
    (``get_settings`` caches them, so the cache goes too)."""
    os.nice(node.nice)
    os.environ["ENCODEQ_WORKER_CONCURRENCY"] = str(node.concurrency)
    os.environ["ENCODEQ_JANITOR"] = "true" if node.janitor else "false"
    get_settings.cache_clear()


def hostname_of(hostname: str, node: Node) -> str:
    """``name@host`` -> ``name@host.control`` (``.high``, ``.bulk``...): the same worker name
    (``name@`` finds every node of a worker), distinct Celery nodes."""
    return f"{hostname}.{NODE_SUFFIXES.get(node.queue, OTHER_NODE_SUFFIX)}"


def process_name(node: Node) -> bytes:
    # The process name (``/proc/PID/comm``, ``ps``, ``top``): a fork shares the command line.
    return f"encodeq-{NODE_SUFFIXES.get(node.queue, OTHER_NODE_SUFFIX)}".encode()


def start_all(hostname: str, others: list[Node], loglevel: str, run: NodeRunner) -> list[int]:
    """Fork each node; their pids. This process's Celery shutdown is forwarded to them, from a
    handler connected once they are all forked (a node must not inherit its siblings' handler:
    its own shutdown would signal them)."""
    pids = [_fork(hostname, node, loglevel, run) for node in others]

    def forward(sender: Any = None, how: str = "Warm", **_: Any) -> None:
        # Warm as SIGTERM, whatever started it: a Ctrl-C reaches every process of the terminal's
        # group, and a second SIGINT would make a node's warm shutdown cold.
        sig = signal.SIGQUIT if how == "Cold" else signal.SIGTERM
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    signals.worker_shutting_down.connect(forward, weak=False)
    return pids


def _fork(hostname: str, node: Node, loglevel: str, run: NodeRunner) -> int:
    """Fork a node (``run`` on its queue, at its niceness); its pid."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the forked node
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            libc.prctl(PR_SET_NAME, ctypes.c_char_p(process_name(node)))
            if os.getppid() != parent:  # the worker died before the line above
                os._exit(1)
            enter(node)
            run(node.concurrency, loglevel, hostname_of(hostname, node), node.queue)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        finally:
            os._exit(code)
    return pid


def stop(pids: list[int]) -> int:
    """Warm-stop the forked nodes (if nothing did yet) and wait for them; the first non-zero
    exit code (0 when all exited cleanly)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    codes = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
    return next((c for c in codes if c), 0)
