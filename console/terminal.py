"""Where the ``encodeq`` commands write: results on stdout, progress and errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

#: Results (job ids, tables, summaries).
out = Console()
#: Progress bars, errors, and everything else when stdout carries JSON.
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: usage, 1: not found...)."""
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
