"""A three-node RabbitMQ cluster on this machine, beside the system node: the cluster tier's
(tests/test_cluster.py) and the durability lesson's (console/learn/scenarios/durability.py).

Why this shape: Debian's RabbitMQ runs as the ``rabbitmq`` user and /etc/rabbitmq pins port 5672,
so each node gets a folder the ``rabbitmq`` user owns (data, logs, pid, feature flags, quorum
logs), a config file of its own (``listeners.tcp.local = 127.0.0.1:570N``), its own empty
enabled-plugins file and distribution port. The nodes join the first as an operator would
(``stop_app``, ``join_cluster``, ``start_app``). ``kill`` is a crash, not a shutdown: SIGKILL of
the node's Erlang VM, whose pid the node itself reports (``os:getpid()``). ``running_cluster``
tears every node down (its process group killed, its folder removed) however the block ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from console.rabbitmq_cli import RabbitmqctlError, rabbitmqctl
from console.waiting import wait_for

NODE_NAMES = ("eqa", "eqb", "eqc")
FIRST_PORT = 5701
#: Erlang distribution ports: the AMQP port plus this (25701...), clear of the system node's 25672.
DIST_OFFSET = 20000
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
USER = "rabbitmq"
#: Seconds a node may take to boot (or boot again with its quorum queues).
BOOT_TIMEOUT_S = 120


@dataclass
class Node:
    """One node: its name, AMQP port, folder, and (while it runs) its processes."""

    short: str
    port: int
    home: Path
    proc: subprocess.Popen | None = None
    #: The Erlang VM's pid, as the node reported it when it booted.
    pid: int | None = None

    @property
    def name(self) -> str:
        return f"{self.short}@localhost"

    def url(self, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def env(self) -> dict[str, str]:
        """The node's environment: every path its own, no system-wide env file."""
        home = self.home
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": pwd.getpwnam(USER).pw_dir,  # the Erlang cookie the CLI tools use too
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.port + DIST_OFFSET),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_PID_FILE": str(home / "pid"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(home / "feature_flags"),
            "RABBITMQ_QUORUM_DIR": str(home / "quorum"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def prepare(self) -> None:
        """The node's folder and files, owned by the ``rabbitmq`` user."""
        for sub in ("mnesia", "log", "quorum"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (self.home / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
        )
        (self.home / "enabled_plugins").write_text("[].\n")
        (self.home / "advanced.config").write_text("[].\n")
        (self.home / "rabbitmq-env.conf").write_text("")
        _chown_tree(self.home)

    def spawn(self) -> None:
        """Start the node's VM as the ``rabbitmq`` user, in a process group of its own."""
        log = (self.home / "console.log").open("ab")
        self.proc = subprocess.Popen(
            [SERVER],
            env=self.env(),
            cwd=self.home,
            user=USER,
            group=USER,
            extra_groups=[],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def await_boot(self) -> None:
        """Back once the node runs RabbitMQ; remembers its VM's pid."""
        wait_for(self._answers, BOOT_TIMEOUT_S, f"node {self.name} to answer", every=0.5)
        rabbitmqctl("await_startup", "--timeout", str(BOOT_TIMEOUT_S), node=self.name)
        self.pid = int(rabbitmqctl("eval", "os:getpid().", node=self.name).strip().strip('"'))

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (self.home / "console.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"node {self.name} exited ({self.proc.returncode}):\n{tail}")
        try:
            rabbitmqctl("ping", node=self.name, timeout=60)
        except RabbitmqctlError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the node's VM (and the rest of its process group): a crash."""
        if self.pid is None:
            self.pid = int(rabbitmqctl("eval", "os:getpid().", node=self.name).strip().strip('"'))
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.reap()

    def reap(self) -> None:
        """Kill whatever is left of the node's process group and wait for it."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc, self.pid = None, None


class Cluster:
    """Three nodes, joined; ``kill``/``restart`` a node, read where each queue's replicas are."""

    def __init__(
        self, root: Path, names: tuple[str, ...] = NODE_NAMES, first_port: int = FIRST_PORT
    ) -> None:
        self.root = root
        self.nodes = [Node(short, first_port + i, root / short) for i, short in enumerate(names)]
        #: Seconds the cluster took to form (boot and join), for the report.
        self.formed_in_s = 0.0

    def node(self, name: str) -> Node:
        """A node by its name (``eqa@localhost``) or short name (``eqa``)."""
        return next(n for n in self.nodes if name in (n.name, n.short))

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Boot every node at once, then join the others to the first."""
        started = time.monotonic()
        for node in self.nodes:
            node.prepare()
            node.spawn()
        for node in self.nodes:
            node.await_boot()
        first = self.nodes[0].name
        for node in self.nodes[1:]:
            rabbitmqctl("stop_app", node=node.name)
            rabbitmqctl("join_cluster", first, node=node.name)
            rabbitmqctl("start_app", node=node.name)
        wait_for(lambda: len(self.running()) == len(self.nodes), 60, "the nodes to form a cluster")
        self.formed_in_s = time.monotonic() - started

    def stop(self) -> None:
        for node in self.nodes:
            node.reap()
        shutil.rmtree(self.root, ignore_errors=True)

    def kill(self, name: str) -> None:
        """SIGKILL one node (its VM's pid, from the node itself)."""
        self.node(name).kill()

    def stop_node(self, name: str) -> None:
        """Stop one node the way an operator does before maintenance (``rabbitmqctl stop``):
        its clients are told (CONNECTION_FORCED), its quorum queues hand their leadership over."""
        node = self.node(name)
        rabbitmqctl("stop", node=node.name)
        if node.proc is not None:
            node.proc.wait(timeout=BOOT_TIMEOUT_S)
        node.reap()

    def restart(self, name: str) -> None:
        """Start a killed (or stopped) node again on its own data; back once the cluster counts
        it running again (it rejoins by itself: membership is on its disk)."""
        node = self.node(name)
        node.reap()
        node.spawn()
        node.await_boot()
        wait_for(lambda: node.name in self.running(), 60, f"{node.name} to rejoin")

    def revive(self) -> None:
        """Start again every node a test killed or stopped."""
        for node in self.nodes:
            if node.proc is None:
                self.restart(node.short)

    def running(self) -> list[str]:
        """Nodes the cluster counts as running (asked of any node that answers)."""
        for node in self.alive():
            out = rabbitmqctl("cluster_status", "--formatter", "json", node=node.name, check=False)
            with contextlib.suppress(ValueError):
                return list(json.loads(out).get("running_nodes", []))
        return []

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """``rabbitmqctl ARGS`` on a running node."""
        return rabbitmqctl(*args, node=self.alive()[0].name, timeout=timeout)

    # --- vhosts and URLs ------------------------------------------------------------------------
    def add_vhost(self, vhost: str) -> None:
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self.ctl("delete_vhost", vhost)

    def failover_url(self, vhost: str, first: str | None = None) -> str:
        """Every node's URL, ``;``-separated (kombu's failover list), starting at ``first``."""
        order = list(self.nodes)
        if first is not None:
            at = order.index(self.node(first))
            order = order[at:] + order[:at]
        return ";".join(node.url(vhost) for node in order)

    # --- queues ---------------------------------------------------------------------------------
    def queues(self, vhost: str) -> dict[str, dict]:
        """Each queue of ``vhost`` by name: its type, leader, members and online members."""
        columns = ("name", "type", "leader", "members", "online", "messages", "arguments")
        out = self.ctl("list_queues", "-p", vhost, *columns, "--formatter", "json")
        return {row["name"]: row for row in json.loads(out or "[]")}

    def leader_of(self, queue: str, vhost: str) -> str:
        return str(self.queues(vhost)[queue]["leader"])

    def members(self, queue: str, vhost: str) -> list[str]:
        return sorted(self.queues(vhost)[queue]["members"])

    def wait_members(self, vhost: str, count: int = 3, timeout: float = 90) -> None:
        """Until every quorum queue of ``vhost`` has ``count`` members online and a leader."""

        def complete() -> bool:
            try:
                rows = self.queues(vhost).values()
            except (RuntimeError, ValueError):
                return False
            quorum = [r for r in rows if r.get("type") == "quorum"]
            return all(len(r.get("online") or []) >= count and r.get("leader") for r in quorum)

        wait_for(complete, timeout, f"every quorum queue of {vhost} to have {count} members back")


def _chown_tree(path: Path) -> None:
    user = pwd.getpwnam(USER)
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chown(name, user.pw_uid, user.pw_gid)


@contextmanager
def running_cluster(
    names: tuple[str, ...] = NODE_NAMES, first_port: int = FIRST_PORT
) -> Iterator[Cluster]:
    """A formed cluster for the block; every node killed and every file removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="encodeq-cluster-"))
    _chown_tree(root)
    cluster = Cluster(root, names, first_port)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def cluster_unavailable() -> str | None:
    """Why no cluster can be started here (a sentence), or None when it can: the nodes need
    Debian's RabbitMQ server, its ``rabbitmq`` user and root to run them as that user."""
    if not Path(SERVER).exists():
        return f"no RabbitMQ server at {SERVER} (Debian's rabbitmq-server package)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER!r} user to run the nodes as"
    if os.geteuid() != 0:
        return "starting nodes as the rabbitmq user needs root"
    return None
