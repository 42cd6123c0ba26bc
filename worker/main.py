"""The worker's entry point: ``python -m worker`` (and ``encodeq worker``, which mounts the same
command) runs a Celery worker of ``worker.app``: a node per work queue it consumes (worker/nodes.py:
the control queue, and each encode lane), the others forked from its own. With
``ENCODEQ_METRICS_PORT`` set, its own process serves the metrics of all of them
(worker/exporter.py)."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console

from config.exposure import DefaultSecretError, check_default_secrets
from config.settings import get_settings
from config.topology import CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME
from worker import exporter, nodes
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
    """Run a Celery worker on the work queues (the encode queue brings its lanes): one node per
    queue, so none waits on another."""
    try:  # a well-known secret off loopback: refuse before connecting (config/exposure.py)
        check_default_secrets(get_settings())
    except DefaultSecretError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    name = hostname or f"encodeq-{os.getpid()}@%h"
    # Every file the worker and its ffmpeg write (sources, outputs, cache entries) is 0600 and
    # every folder 0700, inherited by the pool processes and their children.
    os.umask(0o077)
    settings = get_settings()
    try:  # before anything forks: every node and pool process writes to its folder
        metrics = exporter.start(settings)
    except OSError as exc:
        where = f"{settings.metrics_host}:{settings.metrics_port}"
        err.print(f"[bold red]error:[/] cannot serve metrics on {where}: {exc}")
        raise typer.Exit(2) from None
    own, others = nodes.plan(queues.split(","), concurrency, settings)
    forked = nodes.start_all(name, others, loglevel, _run)
    try:
        # A node's pool processes share the host's cores: each ffmpeg takes its share
        # (worker/encoder.py), at the node's niceness; each forked node enters its own.
        nodes.enter(own)
        _run(own.concurrency, loglevel, name, own.queue)
    finally:
        nodes.stop(forked)
        if metrics is not None:
            metrics.close()


def _run(concurrency: int, loglevel: str, name: str, queues: str) -> None:
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
