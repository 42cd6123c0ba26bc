"""The worker's entry point: ``python -m worker`` (and ``encodeq worker``, which mounts the same
command) runs a Celery worker of ``worker.app`` on the control and encode queues."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console

from config.exposure import DefaultSecretError, check_default_secrets
from config.settings import get_settings
from config.topology import CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME
from worker.app import app as celery_app

err = Console(stderr=True, soft_wrap=True)


def worker(
    concurrency: Annotated[int, typer.Option(help="Pool processes (competing consumers).")] = 2,
    loglevel: Annotated[str, typer.Option()] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    queues: Annotated[
        str, typer.Option(help="Work queues to consume, comma-separated (default: both).")
    ] = f"{CONTROL_QUEUE_NAME},{ENCODE_QUEUE_NAME}",
) -> None:
    """Run a Celery worker on the control and encode queues."""
    try:  # a well-known secret off loopback: refuse before connecting (config/exposure.py)
        check_default_secrets(get_settings())
    except DefaultSecretError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    name = hostname or f"encodeq-{os.getpid()}@%h"
    # Every file the worker and its ffmpeg write (sources, outputs, cache entries) is 0600 and
    # every folder 0700, inherited by the pool processes and their children.
    os.umask(0o077)
    celery_app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel}",
            f"--hostname={name}",
            f"--queues={queues}",
            # Mingle asks the other workers (over remote control, off by default) for revoked
            # task ids and waits a second for answers that cannot come; gossip is for it too.
            "--without-mingle",
            "--without-gossip",
        ]
    )
