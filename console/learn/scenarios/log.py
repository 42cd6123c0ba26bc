"""PLACEHOLDER: the lesson 'log' (replace this whole module)."""

from __future__ import annotations

from console.learn.lesson import LessonContext, Outcome, Scenario


def run(context: LessonContext) -> Outcome:
    raise NotImplementedError("log")


SCENARIO = Scenario(name="log", title="log", summary="not written yet", run=run)
