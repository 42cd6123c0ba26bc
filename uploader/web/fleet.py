"""What the dashboard may ask of the fleet it runs beside: only under ``encodeq up``.

``encodeq serve`` alone manages nothing (workers run where their operator started them), so its
app has no fleet and the fleet routes answer 404 ``no_fleet``. ``encodeq up`` (console/up/)
starts the workers, the S3 server and this app in one process and hands the app its supervisor
through this protocol: the web floor states what it needs, the console floor provides it, and
nothing is imported upward.
"""

from __future__ import annotations

from typing import Any, Protocol

from uploader.web.refusal import Refusal

#: Workers one fleet may be asked for: a bound, so a typo cannot fork a hundred ffmpeg pools.
MAX_WORKERS = 16


class FleetError(Refusal):
    """A fleet action refused: a stable code and a message for a person."""


class FleetControl(Protocol):
    """The supervisor of ``encodeq up``: its workers, and the faults it can inject."""

    def describe(self) -> dict[str, Any]:
        """Workers (name, hostname, pid, state), the target count, storage and broker state."""
        ...

    def scale(self, workers: int) -> dict[str, Any]:
        """Start or warm-stop workers until ``workers`` run; returns at once (the target)."""
        ...

    def kill(self, name: str) -> dict[str, Any]:
        """SIGKILL one worker's whole process group, mid-task: what late acks are for."""
        ...

    def cut_storage(self, seconds: float) -> dict[str, Any]:
        """Make S3 unreachable for ``seconds``, then bring it back."""
        ...

    def restore_storage(self) -> dict[str, Any]:
        """End a cut now, before its time."""
        ...

    def restart_broker(self) -> dict[str, Any]:
        """Restart RabbitMQ (only where ``up`` may: a local node it can reach with rabbitmqctl)."""
        ...
