"""What a worker does about a cancelled job (uploader/cancel.py records the cancellation).

Two halves. On the ``job.cancelled`` event (worker/housekeeping.py) every worker kills the job's
programs on its host: every process whose arguments name one of the job's scratch folders (ffmpeg,
ffprobe and their ``setpriv``/``timeout`` wrappers; worker/process.py), within the moment the event
takes to arrive. And every task of the job (worker/app.py) first looks whether the job was
cancelled: a queued task that comes up after the cancel is acked without running; a running one
whose ffmpeg was just killed ends quietly instead of being retried or dead-lettered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

from core.job_model import is_job_id
from core.manifest import JobStore
from core.storage import Storage
from worker import scratch

logger = logging.getLogger(__name__)


def cancelled(job_id: object) -> bool:
    """Whether ``job_id`` names a job that was cancelled (a task's first argument). False when
    storage does not answer: the task then runs, meets the same outage in its own body, and is
    retried by its policy (a check that raised here would escape that policy)."""
    if not (isinstance(job_id, str) and is_job_id(job_id)):
        return False
    try:
        return JobStore(Storage()).cancelled(job_id) is not None
    except Exception as exc:
        logger.info("could not look whether job %s was cancelled (%s); running it", job_id, exc)
        return False


def kill_programs(job_id: str) -> list[int]:
    """SIGKILL this user's processes working in the job's scratch folders; their pids."""
    if not is_job_id(job_id):
        return []
    marker = os.fsencode(str(scratch.root() / f"{scratch.PREFIX}{job_id}-"))
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    if killed:
        logger.warning("job %s cancelled: killed %d process(es) %s", job_id, len(killed), killed)
    return killed
