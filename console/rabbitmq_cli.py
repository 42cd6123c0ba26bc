"""RabbitMQ's CLI tools from Python: the one way the console floor runs ``rabbitmqctl`` (``encodeq
up``'s broker restart, the lessons' scratch vhosts on this machine's node, the local cluster's
nodes) and asks this machine's node which AMQP ports it serves (a broker URL on loopback may be
another node's, or a proxy's: the CLI only ever talks to the local node).

The CLI, not the management API: it is there wherever the server package is, needs no plugin and
no credentials beyond the Erlang cookie, and reaches a node that is up but not yet serving AMQP.
"""

from __future__ import annotations

import re
import subprocess

#: Host names that are this machine.
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: Seconds a command may take unless its caller says otherwise (a node booting, a queue sync).
TIMEOUT_S = 120.0


class RabbitmqctlError(RuntimeError):
    """A ``rabbitmqctl`` command that exited non-zero: the command, then its stderr."""

    def __init__(self, command: str, stderr: str) -> None:
        super().__init__(f"{command}: {stderr}")
        self.stderr = stderr


def rabbitmqctl(
    *args: str, node: str | None = None, timeout: float = TIMEOUT_S, check: bool = True
) -> str:
    """``rabbitmqctl -q [-n NODE] ARGS``: its output; RabbitmqctlError on failure when ``check``
    (subprocess.TimeoutExpired past ``timeout``, OSError without the CLI)."""
    target = ["-n", node] if node else []
    done = subprocess.run(
        ["rabbitmqctl", "-q", *target, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        command = " ".join(["rabbitmqctl", *target, *args])
        raise RabbitmqctlError(command, done.stderr.strip())
    return done.stdout


def local_amqp_ports() -> set[int]:
    """The AMQP ports this machine's node serves (empty when there is no node or no tool).
    Starts an Erlang VM: a second or two."""
    try:
        done = subprocess.run(
            ["rabbitmq-diagnostics", "-q", "listeners"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return set()
    return {int(p) for p in re.findall(r"port: (\d+), protocol: amqp\b", done.stdout)}
