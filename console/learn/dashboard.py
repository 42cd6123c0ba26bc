"""The lessons on the dashboard of ``encodeq up`` (uploader/web/lessons.py's protocol).

A run goes through the same runner as ``encodeq learn`` (console/learn/scratch.py: a scratch vhost
and buckets of its own, gone afterwards), on a thread, with a narrator that records each step so
the page can poll the story as it happens. One run at a time: a lesson starts consumers and
sometimes workers, and ``up`` already runs a fleet on the same cores.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from console.learn.catalog import SCENARIOS, find
from console.learn.event_relay import Sink, relayed_task_events
from console.learn.lesson import Counter, Narrator, Outcome, Scenario
from console.learn.scratch import ScratchError, Watch, check_knobs, run_scenario
from uploader.web.lessons import LessonError

#: Finished runs kept for the page to read (the oldest forgotten first).
KEEP_RUNS = 20
#: How long ``stop`` lets a running lesson finish and clean up its scratch space.
STOP_WAIT_S = 60.0


class Runner(Protocol):
    """``scratch.run_scenario``'s shape (tests hand the runner another)."""

    def __call__(
        self,
        scenario: Scenario,
        narrator: Narrator,
        seed: int,
        knobs: Mapping[str, Counter],
        watch: Watch | None = None,
    ) -> Outcome: ...


class RecordingNarrator:
    """``lesson.Narrator`` that keeps the story: steps and tables, each with its second."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self._entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append({"at": round(time.monotonic() - self.began, 1), **entry})

    def step(self, text: str) -> None:
        self._add({"kind": "step", "text": text})

    def table(self, title: str, columns: Mapping[str, Mapping[str, Counter]]) -> None:
        copied = {name: dict(values) for name, values in columns.items()}
        self._add({"kind": "table", "title": title, "columns": copied})

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)


@dataclass
class LessonRun:
    id: str
    scenario: Scenario
    knobs: dict[str, Counter]
    seed: int
    narrator: RecordingNarrator = field(default_factory=RecordingNarrator)
    state: str = "running"
    outcome: Outcome | None = None
    error: str | None = None
    thread: threading.Thread | None = None

    def describe(self) -> dict[str, Any]:
        done = self.outcome
        return {
            "id": self.id,
            "name": self.scenario.name,
            "title": self.scenario.title,
            "knobs": self.knobs,
            "seed": self.seed,
            "state": self.state,
            "steps": self.narrator.entries(),
            "verdict": done.verdict if done else None,
            "counters": done.counters if done else None,
            "lesson": done.lesson if done else None,
            "see": done.see if done else None,
            "error": self.error,
        }


class LessonRunner:
    """Starts lessons on threads and answers for their runs (``LessonsControl``)."""

    def __init__(self, runner: Runner = run_scenario) -> None:
        self._runner = runner
        self._sink: Sink | None = None
        self._runs: OrderedDict[str, LessonRun] = OrderedDict()
        self._lock = threading.Lock()

    def list(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "title": s.title, "summary": s.summary, "knobs": dict(s.knobs)}
            for s in SCENARIOS
        ]

    def start(self, name: str, knobs: dict[str, Any]) -> dict[str, Any]:
        scenario = find(name)
        if scenario is None:
            raise LessonError(404, "no_such_lesson", f"there is no lesson {name!r}")
        try:
            check_knobs(scenario, knobs)
        except ValueError as exc:
            raise LessonError(400, "unknown_knob", str(exc)) from None
        with self._lock:
            busy = next((r for r in self._runs.values() if r.state == "running"), None)
            if busy is not None:
                raise LessonError(
                    409, "lesson_running", f"{busy.scenario.name} is running: one at a time"
                )
            run = LessonRun(uuid.uuid4().hex[:12], scenario, dict(knobs), random.randrange(2**31))
            self._runs[run.id] = run
            while len(self._runs) > KEEP_RUNS:
                self._runs.popitem(last=False)
        run.thread = threading.Thread(
            target=self._run, args=(run,), name=f"encodeq-lesson-{name}", daemon=True
        )
        run.thread.start()
        return {"id": run.id, "name": name, "seed": run.seed, "state": run.state}

    def forward_task_events(self, sink: Sink) -> None:
        """Each task run of a lesson's workers goes to ``sink`` too (the page's timeline),
        tagged ``lesson`` (its name) and ``lesson_run`` (the run's id)."""
        self._sink = sink

    def _watch(self, run: LessonRun) -> Watch | None:
        if self._sink is None:
            return None
        tags = {"lesson": run.scenario.name, "lesson_run": run.id}
        return partial(relayed_task_events, sink=self._sink, tags=tags)

    def _run(self, run: LessonRun) -> None:
        narrator = run.narrator
        narrator.step(f"seed {run.seed}")
        try:
            watch = self._watch(run)
            run.outcome = self._runner(run.scenario, narrator, run.seed, run.knobs, watch=watch)
            run.state = "done"
        except ScratchError as exc:
            run.error, run.state = str(exc), "error"
        except Exception as exc:  # the page says what went wrong; up keeps serving
            run.error, run.state = f"{type(exc).__name__}: {exc}", "error"

    def state(self, run_id: str) -> dict[str, Any]:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise LessonError(404, "no_such_run", f"no lesson run {run_id!r} (or it is forgotten)")
        return run.describe()

    def stop(self) -> None:
        """Let a running lesson finish, so its scratch vhost and buckets are removed."""
        with self._lock:
            threads = [r.thread for r in self._runs.values() if r.thread and r.state == "running"]
        for thread in threads:
            thread.join(STOP_WAIT_S)
