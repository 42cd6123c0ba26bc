"""One Prometheus exporter per worker: ``/metrics`` for every node and pool process of one
``python -m worker`` process tree, served by its main process (core/metrics.py says what).

Why this shape. A worker is several processes: its own (the express lane's Celery node), the
nodes it forks (worker/nodes.py) and each node's prefork pool, where the tasks run. No process
can serve another's numbers from memory, and the nodes cannot all listen on one port. So, before
anything forks, the worker puts prometheus_client in multi-process mode over a folder of its own
(every process of the tree writes its samples to a file there, named by its pid) and binds the one
port; a scrape sums the files (``MultiProcessCollector``). The folder starts empty and is removed
at a clean exit; a killed worker's folder is swept by the next worker to start on the host.

A process that ended keeps its counters and histograms in the sum (a count never goes down); its
"live" gauges (tasks running) go: each scrape calls ``mark_process_dead`` for every pid of the
folder that no longer runs in this tree (a SIGKILLed pool process says nothing itself).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_wsgi_server, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from config.settings import Settings
from core.metrics import WORKER_METRICS

logger = logging.getLogger(__name__)

#: The private subfolder (``Settings.private_dir``) holding one folder per running worker.
METRICS_FOLDER = "metrics"
#: prometheus_client's variable: where multi-process mode keeps its files.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class Exporter:
    folder: Path
    server: Any
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        """Stop serving and remove the folder (the worker's processes have all ended)."""
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.folder, ignore_errors=True)


def start(settings: Settings) -> Exporter | None:
    """Multi-process mode and the exporter, before the worker forks anything; None when
    ``metrics_port`` is 0. OSError when the port cannot be bound (nothing is left behind)."""
    if not settings.metrics_port:
        return None
    folder = fresh_folder(settings.private_dir(METRICS_FOLDER), os.getpid())
    try:
        enable_multiprocess(folder)
        registry = CollectorRegistry()
        TreeCollector(registry, folder, root=os.getpid())
        server, thread = start_wsgi_server(settings.metrics_port, settings.metrics_host, registry)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # Nodes and pool processes are forked from this process: their copy of the listening socket
    # is closed at once, so only this process holds the port (a restarted worker can bind it).
    os.register_at_fork(after_in_child=server.socket.close)
    logger.info("metrics on %s:%d/metrics", settings.metrics_host, server.server_port)
    return Exporter(folder, server, thread)


def fresh_folder(base: Path, pid: int) -> Path:
    """``base/<pid>``, empty, private; folders of workers no longer running are removed."""
    for entry in base.iterdir():
        if entry.name.isdigit() and entry.is_dir() and not _running(int(entry.name)):
            shutil.rmtree(entry, ignore_errors=True)
    folder = base / str(pid)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    return folder


def enable_multiprocess(folder: Path) -> None:
    """Every series created from now on, in this process and all it forks, writes to ``folder``.

    prometheus_client picks its value class once, when first imported, from
    ``PROMETHEUS_MULTIPROC_DIR``; a worker imports it (with its tasks) before it knows its folder,
    so the class is switched here. A series takes the class when it is created, and ours all have
    labels, so none exists before its first use in a task: checked, not assumed."""
    early = [f.name for m in WORKER_METRICS for f in m.collect() if f.samples]
    if early:
        raise RuntimeError(f"metrics recorded before multi-process mode: {early}")
    os.environ[MULTIPROC_VARIABLE] = str(folder)
    values.ValueClass = values.MultiProcessValue()


class TreeCollector(MultiProcessCollector):
    """The files of the folder, summed, once the live gauges of dead processes are dropped."""

    def __init__(self, registry: CollectorRegistry, folder: Path, root: int) -> None:
        super().__init__(registry, path=str(folder))
        self.folder, self.root = folder, root

    def collect(self) -> Iterator[Any]:
        self.sweep()
        return super().collect()

    def sweep(self) -> list[int]:
        """``mark_process_dead`` for each pid with live gauges that no longer runs in this tree."""
        dead = sorted(
            {pid for pid in _live_gauge_pids(self.folder) if not _in_tree(pid, self.root)}
        )
        for pid in dead:
            mark_process_dead(pid, str(self.folder))
        return dead


def _live_gauge_pids(folder: Path) -> set[int]:
    """Pids of the live-gauge files (``gauge_livesum_<pid>.db``...)."""
    pids = set()
    for path in folder.glob("gauge_live*_*.db"):
        tail = path.stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            pids.add(int(tail))
    return pids


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _running(pid: int) -> bool:
    found = _stat(pid)
    return found is not None and found[0] != "Z"


def _in_tree(pid: int, root: int) -> bool:
    """Whether ``pid`` runs (not a zombie) and descends from ``root``: a pid the kernel gave to
    some other process since ours died is not ours."""
    found = _stat(pid)
    if found is None or found[0] == "Z":
        return False
    for _ in range(64):
        if pid == root:
            return True
        if found is None or pid <= 1:
            return False
        pid = found[1]
        found = _stat(pid)
    return False
