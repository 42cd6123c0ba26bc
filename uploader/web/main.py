"""The HTTP service's entry point: ``python -m uploader.web`` and ``encodeq serve`` (which mounts
this same ``serve``), with the same options, output and exit codes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True, soft_wrap=True)
app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """The HTTP API and live dashboard: uploads, jobs, events, playback, the DLQ. Every API call
    needs ENCODEQ_API_TOKEN; without one a token is generated and a ready link printed."""
    # Imported here, not at the top: `encodeq` mounts this command, and every other command it
    # runs (dlq, upload, worker...) would otherwise load FastAPI and uvicorn first (~0.8 s).
    from uploader.web.server import ServeError
    from uploader.web.server import serve as run_server

    try:
        run_server(host, port)
    except ServeError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
