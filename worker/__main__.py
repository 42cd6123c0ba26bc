"""``python -m worker --concurrency 2 --loglevel INFO``: the same command as ``encodeq worker``."""

from __future__ import annotations

import typer

from worker.main import worker

cli = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
cli.command()(worker)

if __name__ == "__main__":
    cli()
