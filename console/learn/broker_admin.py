"""What a lesson asks of RabbitMQ beyond AMQP: a vhost of its own, and the counts AMQP cannot
give (messages delivered and not yet acked).

Two ways in, tried in this order: ``rabbitmqctl`` when the broker is this machine's node (the
node ``rabbitmqctl`` reaches serves the URL's port: a cluster harness beside it is another node),
as tests/support/broker.py does; else the management HTTP API on port 15672 when it answers with
the URL's credentials. Neither: a clear error, never a guess.
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from console.rabbitmq_cli import LOOPBACK, RabbitmqctlError, local_amqp_ports, rabbitmqctl

MANAGEMENT_PORT = 15672
#: rabbitmqctl starts an Erlang VM per call (about a second): bounded, so a stuck node is an error.
CTL_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 5.0


class AdminUnavailable(RuntimeError):
    """Neither rabbitmqctl on this machine's node nor the management API can reach the broker."""


@dataclass(frozen=True)
class QueueCounts:
    """One queue as the broker counts it: ready, delivered-not-acked, consumers."""

    ready: int
    unacked: int
    consumers: int


class BrokerAdmin(Protocol):
    """Vhosts and queue counts, whichever way the broker is reached."""

    how: str

    def add_vhost(self, vhost: str, user: str) -> None: ...

    def delete_vhost(self, vhost: str) -> None: ...

    def queues(self, vhost: str) -> dict[str, QueueCounts]: ...


class LocalNode:
    """This machine's RabbitMQ node, through ``rabbitmqctl``."""

    how = "rabbitmqctl"

    @staticmethod
    def _ctl(*args: str) -> str:
        try:
            return rabbitmqctl(*args, timeout=CTL_TIMEOUT_S)
        except RabbitmqctlError as exc:
            raise AdminUnavailable(f"rabbitmqctl {args[0]}: {exc.stderr[-300:]}") from None

    def add_vhost(self, vhost: str, user: str) -> None:
        self._ctl("add_vhost", vhost)
        self._ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        self._ctl("delete_vhost", vhost)

    def queues(self, vhost: str) -> dict[str, QueueCounts]:
        columns = ("name", "messages_ready", "messages_unacknowledged", "consumers")
        found = {}
        for line in self._ctl("list_queues", "-p", vhost, *columns).splitlines():
            row = line.split("\t")
            if len(row) == 4 and row[1].isdigit():  # no header, no blank line
                found[row[0]] = QueueCounts(int(row[1]), int(row[2]), int(row[3]))
        return found


class ManagementApi:
    """The management plugin's HTTP API (any node of the cluster answers for all)."""

    how = "management API"

    def __init__(self, host: str, user: str, password: str, port: int = MANAGEMENT_PORT) -> None:
        self.base = f"http://{host}:{port}/api"
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = f"Basic {token}"

    def _call(self, method: str, path: str, document: Any = None) -> Any:
        data = None if document is None else json.dumps(document).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        request.add_header("Authorization", self._auth)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            body = response.read()
        return json.loads(body) if body else None

    def answers(self) -> bool:
        try:
            self._call("GET", "/overview")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return True

    def add_vhost(self, vhost: str, user: str) -> None:
        self._call("PUT", f"/vhosts/{quote(vhost, safe='')}", {})
        grant = {"configure": ".*", "write": ".*", "read": ".*"}
        self._call("PUT", f"/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}", grant)

    def delete_vhost(self, vhost: str) -> None:
        self._call("DELETE", f"/vhosts/{quote(vhost, safe='')}")

    def queues(self, vhost: str) -> dict[str, QueueCounts]:
        rows = self._call("GET", f"/queues/{quote(vhost, safe='')}") or []
        return {
            row["name"]: QueueCounts(
                int(row.get("messages_ready", 0) or 0),
                int(row.get("messages_unacknowledged", 0) or 0),
                int(row.get("consumers", 0) or 0),
            )
            for row in rows
        }


def admin_for(broker_url: str) -> BrokerAdmin:
    """How to administer the broker of ``broker_url`` (its first URL, for a failover list)."""
    url = urlsplit(broker_url.split(";")[0].strip())
    user, password = unquote(url.username or "guest"), unquote(url.password or "guest")
    return _admin(url.hostname or "127.0.0.1", url.port or 5672, user, password)


@cache
def _admin(host: str, port: int, user: str, password: str) -> BrokerAdmin:
    """Asked once per broker (asking the local node which ports it serves takes a second)."""
    if host in LOOPBACK and shutil.which("rabbitmqctl") and port in local_amqp_ports():
        return LocalNode()
    api = ManagementApi(host, user, password)
    if api.answers():
        return api
    raise AdminUnavailable(
        f"cannot make a scratch vhost on the broker at {host}:{port}: it is not this machine's "
        f"RabbitMQ node (rabbitmqctl) and its management API does not answer at {api.base}"
        " (rabbitmq-plugins enable rabbitmq_management)"
    )
