"""A cluster-tier test's own vhost on the cluster, and what its tests upload and check there.

Each test gets a vhost of its own, every node up, the topology declared with its replicas in
place, and this process's ``ENCODEQ_*`` (so every subprocess's) pointed at the vhost through the
failover list; nodes are started again before the vhost is deleted (a vhost delete waits on every
quorum queue's members, a dead one for ever).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import PIPE
from typing import IO

from kombu import Connection

from config.settings import get_settings
from config.topology import declare_topology
from core.job_model import Manifest
from core.layout import LIVE_PLAYLIST_NAME, PLAYLIST_NAME, RENDITIONS
from support.broker import queue_state
from support.cluster import NODE_NAMES, Cluster
from support.commands import ENCODEQ
from support.media import make_video
from support.stack import patched_environ
from support.storage import storage

REPLICAS = 3
#: A node's loss returns every message in flight on its connections, and RabbitMQ 3.10 counts each
#: return as a delivery: the production limit (4), not the default suite's 2, so a rolling
#: restart cannot use up a task's deliveries.
DELIVERY_LIMIT = 4
SIZES = ((640, 360), (854, 480), (480, 270))
FPS = 25


class ClusterRun:
    """A test's vhost on the cluster and the ``ENCODEQ_*`` that point a client at it."""

    def __init__(self, cluster: Cluster, vhost: str) -> None:
        self.cluster, self.vhost = cluster, vhost

    def url(self, first: str | None = None) -> str:
        return self.cluster.failover_url(self.vhost, first)

    def env(self, first: str | None = None) -> dict[str, str]:
        """A client's settings: every node (``first`` tried first), three replicas."""
        return {
            "ENCODEQ_BROKER_URL": self.url(first),
            "ENCODEQ_QUORUM_REPLICAS": str(REPLICAS),
            "ENCODEQ_DELIVERY_LIMIT": str(DELIVERY_LIMIT),
        }

    def leader_of(self, queue: str) -> str:
        """The short name (``eqa``) of the node leading ``queue``."""
        return self.cluster.leader_of(queue, self.vhost).split("@")[0]

    def depth(self, queue: str) -> int:
        """Messages ready in ``queue``, as its leader says (a passive declare): the counts
        ``rabbitmqctl list_queues`` shows for a quorum queue are sampled, and lag behind."""
        return queue_state(queue, self.url())[0]

    @staticmethod
    def others(node: str) -> list[str]:
        return [n for n in NODE_NAMES if n != node]


@contextmanager
def cluster_run(cluster: Cluster) -> Iterator[ClusterRun]:
    """A fresh vhost with the topology replicated; the environment put back afterwards."""
    cluster.revive()
    on = ClusterRun(cluster, f"encodeq-cluster-{uuid.uuid4().hex[:8]}")
    cluster.add_vhost(on.vhost)
    try:
        with patched_environ(on.env()):
            get_settings.cache_clear()
            with Connection(on.url()) as connection:
                declare_topology(connection)
            cluster.wait_members(on.vhost, REPLICAS)
            yield on
    finally:
        get_settings.cache_clear()
        cluster.revive()
        cluster.delete_vhost(on.vhost)


def seeded() -> random.Random:
    """A random source whose seed is printed (and taken from ENCODEQ_TEST_SEED when set)."""
    seed = int(os.environ.get("ENCODEQ_TEST_SEED") or random.randrange(2**32))
    print(f"\nseed {seed} (ENCODEQ_TEST_SEED={seed} repeats it)")
    return random.Random(seed)


def sources(media_dir: Path, rng: random.Random, count: int) -> list[tuple[Path, int]]:
    """``count`` sources of random sizes and lengths (2 to 5 s): (path, frames)."""
    found = []
    for _ in range(count):
        (width, height), seconds = rng.choice(SIZES), rng.randint(2, 5)
        path = make_video(media_dir / f"cl-{width}x{height}-{seconds}s.mp4", width, height, seconds)
        found.append((path, seconds * FPS))
    return found


def upload_all(paths: list[Path], env: dict[str, str] | None = None) -> list[str]:
    """``encodeq upload PATH...``: the job ids, in order."""
    result = subprocess.run(
        [*ENCODEQ, "upload", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


class Upload:
    """``encodeq upload PATH --wait`` in the background, its output read as it comes: the moment
    its job id came out is the moment RabbitMQ confirmed the probe (the job is published)."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        argv = [*ENCODEQ, "upload", str(path), "--wait", "--timeout", "240"]
        self.proc = subprocess.Popen(argv, stdout=PIPE, stderr=PIPE, env=env)
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[bytes], into: list[tuple[float, str]]) -> None:
        for line in stream:
            into.append((time.monotonic(), line.decode(errors="replace").rstrip()))

    @property
    def published_at(self) -> float | None:
        return self.out[0][0] if self.out else None

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """Its exit code, stdout and stderr, once it ended."""
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=30)
        return code, "\n".join(t for _, t in self.out), "\n".join(t for _, t in self.err)


def broker_sockets(pid: int, port: int) -> set[int]:
    """Inodes of the established TCP connections process ``pid`` holds to ``port`` here."""
    owned = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owned.add(int(target[8:-1]))
    found = set()
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port, state, inode = int(fields[2].split(":")[1], 16), fields[3], fields[9]
            if state == "01" and remote_port == port and int(inode) in owned:
                found.add(int(inode))
    return found


def stop_while_connected(proc: subprocess.Popen, port: int, nth: int, timeout: float) -> int:
    """SIGSTOP ``proc`` while its ``nth`` (or a later) connection to ``port`` is open: frozen in
    the middle of talking to that node, however fast the machine. Returns the connection's
    number; the caller sends SIGCONT."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        open_now = broker_sockets(proc.pid, port)
        seen += sorted(open_now - set(seen))
        if len(seen) >= nth and open_now & set(seen[nth - 1 :]):
            os.kill(proc.pid, signal.SIGSTOP)
            if open_now & broker_sockets(proc.pid, port) & set(seen[nth - 1 :]):
                return max(seen.index(i) for i in open_now if i in seen) + 1
            os.kill(proc.pid, signal.SIGCONT)  # it closed just before the stop: the next one
        time.sleep(0.001)
    raise AssertionError(f"no connection #{nth} to port {port} (seen {len(seen)})")


def job_named(out: str, err: str) -> str | None:
    """The job an upload printed (stdout), or named failing it (RabbitMQ did not take it)."""
    if out.split():
        return out.split()[0]
    marker = "did not take job "
    return err.split(marker)[1].split()[0] if marker in err else None


def assert_written_once(manifest: Manifest) -> None:
    """Completed, and each rendition's objects are its segments and playlists (the finished one,
    and the live one if it went live), nothing else: a redelivered encode overwrote the same keys
    rather than adding any."""
    assert manifest.state == "completed", (manifest.job_id, manifest.error)
    for r in manifest.renditions:
        prefix = f"{manifest.job_id}/{r.name}/"
        names = {key.removeprefix(prefix) for key in storage().list_keys(RENDITIONS, prefix)}
        segments = {n for n in names if n.endswith(".ts")}
        assert len(segments) == r.segments, (manifest.job_id, r.name, sorted(names))
        assert PLAYLIST_NAME in names and names - segments <= {PLAYLIST_NAME, LIVE_PLAYLIST_NAME}
