"""Scratch folders of running tasks, under the per-user private work folder.

A task's folder is locked (``flock``) by the process using it for as long as it exists, and that
process removes it when the task ends. A process that dies (SIGKILL, the OOM killer, Celery's hard
time limit, a whole worker killed) cannot; the kernel releases its lock, so ``sweep`` (at worker
start, then every few minutes) removes exactly the folders nobody holds, never one in use by a
sibling pool process or another worker sharing the host. ``busy`` says whether a task of a job
runs on this host (the host cache waits for that before it drops a finished job's entries).

The folder is created and locked under a shared lock on a guard file, and the sweep takes that
lock exclusively while it picks its victims, so a folder just made and not locked yet is never
mistaken for a dead one. Locks are per open file: take them only on a thread that does not race
with forks (a pool process's task thread; the worker's event loop, which is where the pool forks).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from config.settings import get_settings
from core.job_model import is_job_id

logger = logging.getLogger(__name__)

PREFIX = "encodeq-"
_GUARD = ".scratch.lock"


def root() -> Path:
    """The private work folder (0700) holding every scratch folder of this host's tasks."""
    return get_settings().private_dir("work")


@contextlib.contextmanager
def _guard(base: Path, exclusive: bool) -> Iterator[None]:
    fd = os.open(base / _GUARD, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_dir(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # gone meanwhile, or not a folder of ours
        return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def folder(job_id: str) -> Iterator[Path]:
    """A new scratch folder for one task of ``job_id``: locked while in use, removed after."""
    if not is_job_id(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    base = root()
    fd: int | None = None
    try:
        # inside the try: a soft time limit landing here must not leak a held lock
        with _guard(base, exclusive=False):
            path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{job_id}-", dir=base))
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)  # at most a moment: only a ``busy`` look can hold it
        yield path
    finally:
        try:
            if fd is not None:  # still locked: no sweep races with this
                shutil.rmtree(path, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)


def busy(job_id: str) -> bool:
    """Whether a live task of ``job_id`` holds a scratch folder on this host (this process's
    own folders count too)."""
    if not is_job_id(job_id):
        return False
    for path in root().glob(f"{PREFIX}{job_id}-*"):
        fd = _open_dir(path)
        if fd is None:
            continue
        try:
            if not _try_lock(fd):
                return True
        finally:
            os.close(fd)
    return False


def sweep() -> list[Path]:
    """Remove the scratch folders no live process holds (their task died); the removed ones."""
    base = root()
    victims: list[tuple[Path, int]] = []
    with _guard(base, exclusive=True):  # nobody is between making a folder and locking it
        for path in base.glob(f"{PREFIX}*"):
            fd = _open_dir(path)
            if fd is None:
                continue
            if _try_lock(fd):
                victims.append((path, fd))
            else:
                os.close(fd)
    for path, fd in victims:  # removed under our lock, with the guard free for new tasks
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
    if victims:
        logger.info("removed %d scratch folders left by dead tasks", len(victims))
    return [path for path, _ in victims]
