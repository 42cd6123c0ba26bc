"""What the dashboard may ask of the lessons (``encodeq learn``): only under ``encodeq up``.

The lessons live in the console floor (console/learn/), above this one; ``encodeq up`` hands the
app a runner through this protocol, as it hands it the fleet (fleet.py): the web floor states what
it needs, the console floor provides it, nothing is imported upward. Under ``encodeq serve`` alone
there is none and the lesson routes answer 404 ``no_lessons``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from uploader.web.refusal import Refusal


class LessonError(Refusal):
    """A lesson request refused: a stable code and a message for a person."""


class LessonsControl(Protocol):
    """Runs lessons, each in a scratch space of its own, in the background."""

    def list(self) -> list[dict[str, Any]]:
        """Every lesson: name, title, summary, knobs (name -> default)."""
        ...

    def start(self, name: str, knobs: dict[str, Any]) -> dict[str, Any]:
        """Start one run (``knobs`` over the lesson's defaults); returns at once with its ``id``.
        LessonError: no such lesson (404), an unknown knob (400), one already running (409)."""
        ...

    def forward_task_events(self, sink: Callable[[dict[str, Any]], None]) -> None:
        """From now on, hand ``sink`` each ``task.*`` event of a running lesson's workers (they
        run in a scratch vhost the page does not subscribe to), tagged ``lesson``: the page's
        timeline draws them beside the fleet's."""
        ...

    def state(self, run_id: str) -> dict[str, Any]:
        """A run so far: ``steps`` (narration and tables, in order), ``state`` (running, done,
        error), and once done ``verdict``, ``counters``, ``lesson``, ``see``."""
        ...
