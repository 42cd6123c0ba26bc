"""What a lesson is: a scenario that runs against the real broker and returns a verdict computed
from what the broker (and S3) reported, with the counters it was computed from.

A scenario never prints its verdict from a script: ``Outcome.passed`` is an expression over
``counters``, and ``knobs`` let a test break the mechanism (turn late acks off, say) and watch the
verdict change.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: What a counter may hold: counts, seconds, names.
Counter = int | float | str | bool
Counters = dict[str, Counter]


class Narrator(Protocol):
    """Where a scenario says what happens while it happens (a terminal, a dashboard, nowhere)."""

    def step(self, text: str) -> None:
        """One step of the story, in the present tense."""

    def table(self, title: str, columns: Mapping[str, Mapping[str, Counter]]) -> None:
        """Counts side by side: column name -> {row name -> value}."""


class SilentNarrator:
    """For ``--json`` and tests: the story goes nowhere, only the outcome matters."""

    def step(self, text: str) -> None:
        pass

    def table(self, title: str, columns: Mapping[str, Mapping[str, Counter]]) -> None:
        pass


@dataclass
class LessonContext:
    """What a scenario gets: a broker URL of its own (a scratch vhost, deleted afterwards), where
    to narrate, a seeded random source, and the knobs (mechanisms a test may turn off)."""

    broker_url: str
    narrator: Narrator
    rng: random.Random
    knobs: dict[str, Counter] = field(default_factory=dict)
    #: The scratch space's ``ENCODEQ_*`` (broker URL, S3 endpoint and keys, a bucket prefix of its
    #: own): what the worker processes a scenario starts get, and its own ``Settings``.
    env: dict[str, str] = field(default_factory=dict)
    #: A folder of the run's own (sources, worker logs), removed afterwards; None: none was made.
    workdir: Path | None = None

    def knob(self, name: str, default: Counter) -> Counter:
        return self.knobs.get(name, default)


@dataclass
class Outcome:
    """The verdict, the broker figures it was computed from, and what a learner keeps."""

    passed: bool
    counters: Counters
    #: Two or three sentences a learner can keep.
    lesson: str
    #: Where the real system does the same thing (a module path, e.g. ``core/celery_app.py``).
    see: str

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"


@dataclass(frozen=True)
class Scenario:
    """One lesson: ``run`` does it against ``context.broker_url`` and returns the outcome."""

    name: str
    title: str
    #: One line for ``encodeq learn`` and README.
    summary: str
    run: Callable[[LessonContext], Outcome]
    #: The knobs ``run`` reads (name -> default): each one is a mechanism a test can break.
    knobs: Mapping[str, Counter] = field(default_factory=dict)
