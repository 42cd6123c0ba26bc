"""The ``encodeq`` command: worker, upload, status, jobs, cancel, dlq, demo, watch, serve, up,
scale, learn.

A thin Typer app: each command lives with what it does and is mounted here under its name. The
services' own entry points are mounted as they are (``worker/main.py``, ``uploader/web/main.py``,
``dlq_inspector/cli.py``), so ``encodeq worker`` and ``python -m worker`` run the same code.
"""

from __future__ import annotations

import typer

from config.settings import get_settings
from console import jobs, minio_setup, upload, watch
from console.demo import tour
from console.learn import command as learn_command
from console.up import command as up_command
from dlq_inspector.cli import app as dlq_app
from uploader.web import main as web_main
from worker import main as worker_main

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help=__doc__.split("\n\n")[0],  # the first line; the rest is for readers of this file
    pretty_exceptions_show_locals=False,
)
app.command("worker")(worker_main.worker)
app.command()(upload.upload)
app.command()(jobs.status)
app.command("jobs")(jobs.list_jobs)
app.command()(jobs.cancel)
app.add_typer(dlq_app, name="dlq", help="Inspect, replay and purge the dead-letter queue.")
app.command()(tour.demo)
app.command()(watch.watch)
app.command("serve")(web_main.serve)
app.command("minio-setup")(minio_setup.command)
app.command()(up_command.up)
app.command()(up_command.scale)
app.command()(learn_command.learn)


@app.callback()
def main() -> None:
    """encodeq: upload videos, encode them on competing Celery workers, inspect what died."""
    get_settings()


if __name__ == "__main__":  # pragma: no cover
    app()
