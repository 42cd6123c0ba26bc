"""One ``encodeq up`` per data directory: its lock, and the file that tells other commands where
it runs.

The lock is an ``flock`` on ``DATA_DIR/up.lock``, held for the life of the process: the kernel
drops it when the process dies, however it dies, so a crashed ``up`` never blocks the next one
(a pid file alone would). ``DATA_DIR/up.json`` (mode 0600: it holds the dashboard's token, a
secret of this user only) tells ``encodeq scale`` and a second ``up`` where the running one is.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

LOCK_NAME, STATE_NAME = "up.lock", "up.json"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/encodeq``, else ``~/.local/share/encodeq``: the usual place for a
    program's data that a user keeps between runs."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "encodeq"


class AlreadyRunning(Exception):
    """Another ``encodeq up`` holds this data directory; the message says where it runs."""


@dataclass
class UpState:
    pid: int
    #: The dashboard's address, without the token.
    url: str
    token: str
    s3_endpoint: str
    data_dir: str

    def link(self) -> str:
        return f"{self.url}#token={self.token}"


class Instance:
    """``with Instance(data_dir) as me:`` holds the lock; ``me.publish(state)`` writes up.json;
    both are undone on exit."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock: IO[str] | None = None

    def __enter__(self) -> Instance:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = (self.data_dir / LOCK_NAME).open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            running = read_state(self.data_dir)
            where = f" (pid {running.pid}, dashboard {running.url})" if running else ""
            raise AlreadyRunning(
                f"encodeq up is already running on {self.data_dir}{where}: use that one"
                " (`encodeq scale N` changes its workers), or stop it with Ctrl-C first"
            ) from None
        self._lock = lock
        return self

    def publish(self, state: UpState) -> None:
        path = self.data_dir / STATE_NAME
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(state), out, indent=2)
        os.replace(tmp, path)

    def __exit__(self, *exc: object) -> None:
        (self.data_dir / STATE_NAME).unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock


def read_state(data_dir: Path) -> UpState | None:
    """The running ``up`` of ``data_dir``, or None. The lock says whether one runs (a pid in a
    file left by a killed ``up`` may belong to another process by now); up.json says where."""
    if not _locked(data_dir):
        return None
    try:
        return UpState(**json.loads((data_dir / STATE_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return None  # starting: the lock is held, up.json not written yet


def _locked(data_dir: Path) -> bool:
    try:
        probe = (data_dir / LOCK_NAME).open("r")
    except OSError:
        return False
    with probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False
