"""``python -m console.learn.drill_worker``: the project's worker with the lessons' own tasks, and
the one setting a lesson may turn back to Celery's default.

Why not ``python -m worker``: it cannot show what the project never does. Its tasks ack late and
write to deterministic keys, so a lesson about early acks and duplicate outputs needs a task that
acks early and one that writes a new object per run. Everything else is the real worker: the app
of worker/app.py (its consumer that dead-letters, its failure records, the task events of the
timeline), the real topology and queues, a Celery node consuming them.

``ENCODEQ_LEARN_ACKS_ON_FAILURE=true`` runs it with Celery's default the project turns off
(core/celery_app.py): a failed task's message is acked, so it is never dead-lettered.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Annotated

import typer
from celery import Task

from config.settings import get_settings
from config.topology import CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME
from core.events import emit
from core.storage import Storage
from worker import main as worker_main
from worker.app import app

#: The lessons' bucket (``<prefix>learn``) and their tasks.
LEARN_BUCKET = "learn"
#: Acks late like every task of the project (core/celery_app.py).
RENDER_TASK = "encodeq.learn_render"
#: The same work, acked early: when the worker takes the message, before the work.
RENDER_EARLY_TASK = "encodeq.learn_render_early"
#: Where a first delivery waits to be killed: before writing its output, or after it (before
#: the ack). A redelivery never waits.
HOLD_BEFORE, HOLD_AFTER = "before_output", "after_output"
#: The queues a drill worker of a whole pipeline consumes (the poison lesson's).
PIPELINE_QUEUES = f"{CONTROL_QUEUE_NAME},{ENCODE_QUEUE_NAME}"
#: A held task that nobody kills goes on after this (a lesson kills it in well under a second).
HOLD_S = 120.0
#: ``-fflags +bitexact`` and no metadata: the same input gives the same bytes, run after run.
BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1"]


def output_key(out_prefix: str, idempotent: bool) -> str:
    """A deterministic key (a second run rewrites the first one's object) or one per run."""
    return (
        f"{out_prefix}/output.mp4" if idempotent else f"{out_prefix}/run-{uuid.uuid4().hex[:8]}.mp4"
    )


def _hold(task: Task, where: str) -> None:
    """Say so on the events exchange, then wait for the lesson's SIGKILL."""
    request = task.request
    emit(app, "learn.holding", task_id=request.id, worker=request.hostname, where=where)
    threading.Event().wait(HOLD_S)


def render(task: Task, source_key: str, out_prefix: str, idempotent: bool, hold: str) -> str:
    """Scale the source down with ffmpeg and store the result; hold where the lesson asked."""
    storage = Storage()
    first = not (task.request.delivery_info or {}).get("redelivered")
    with tempfile.TemporaryDirectory(dir=get_settings().private_dir("learn")) as folder:
        source, out = Path(folder) / "source.mp4", Path(folder) / "out.mp4"
        storage.download(LEARN_BUCKET, source_key, source)
        argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(source)]
        codec = ["-vf", "scale=160:90", "-c:v", "libx264", "-preset", "ultrafast", *BITEXACT]
        subprocess.run([*argv, *codec, str(out)], check=True, capture_output=True, timeout=60)
        if first and hold == HOLD_BEFORE:
            _hold(task, hold)
        key = output_key(out_prefix, idempotent)
        storage.put_file(LEARN_BUCKET, key, out, "video/mp4")
    emit(app, "learn.output", task_id=task.request.id, worker=task.request.hostname, key=key)
    if first and hold == HOLD_AFTER:
        _hold(task, hold)
    return key


@app.task(name=RENDER_TASK, bind=True)
def render_late(self: Task, source_key: str, out_prefix: str, idempotent: bool, hold: str) -> str:
    return render(self, source_key, out_prefix, idempotent, hold)


@app.task(name=RENDER_EARLY_TASK, bind=True, acks_late=False)
def render_early(self: Task, source_key: str, out_prefix: str, idempotent: bool, hold: str) -> str:
    return render(self, source_key, out_prefix, idempotent, hold)


def main(
    concurrency: Annotated[int, typer.Option()] = 1,
    hostname: Annotated[str, typer.Option()] = "learn@%h",
    queues: Annotated[str, typer.Option()] = ENCODE_QUEUE_NAME,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """The real worker entry point (worker/main.py), this module's tasks registered with it."""
    if os.environ.get("ENCODEQ_LEARN_ACKS_ON_FAILURE", "").lower() in ("1", "true", "yes"):
        app.conf.task_acks_on_failure = True  # read by every task bound from now on
        for task in app.tasks.values():  # and by any bound already
            task.acks_on_failure = True
    worker_main.worker(concurrency=concurrency, loglevel=loglevel, hostname=hostname, queues=queues)


if __name__ == "__main__":
    typer.run(main)
