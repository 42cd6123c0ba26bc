"""The terminal's narrator: each step as it happens (with the seconds since the start), counts
side by side in one table, and the ending: verdict, what to keep, where the real system does it."""

from __future__ import annotations

import time
from collections.abc import Mapping

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from console.learn.lesson import Counter, Outcome


def shown(value: Counter) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


class RichNarrator:
    """``lesson.Narrator`` on a Rich console (stdout, or stderr when stdout carries JSON)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.began = time.monotonic()

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self.began
        self.console.print(
            Text.assemble((f"{elapsed:5.1f}s ", "dim"), ("• ", "cyan"), text), soft_wrap=True
        )

    def table(self, title: str, columns: Mapping[str, Mapping[str, Counter]]) -> None:
        """One column per name, one row per counter any column has, blanks where one has not."""
        rows: list[str] = []
        for values in columns.values():
            rows += [name for name in values if name not in rows]
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("")
        for name in columns:
            table.add_column(escape(name), justify="right")
        for row in rows:
            cells = [shown(values[row]) if row in values else "" for values in columns.values()]
            table.add_row(escape(row), *cells)
        self.console.print(table)

    def ending(self, outcome: Outcome) -> None:
        """The verdict (from the counters), the sentences to keep, the pointer."""
        style = "bold green" if outcome.passed else "bold red"
        verdict = Text(f"verdict: {outcome.verdict}", style=style)
        body = Text.assemble(verdict, "\n\n", outcome.lesson, "\n\n", ("see ", "dim"), outcome.see)
        self.console.print(Panel(body, border_style="green" if outcome.passed else "red"))
