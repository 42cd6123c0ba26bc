"""PLACEHOLDER: the lesson 'ordering' (replace this whole module)."""

from __future__ import annotations

from console.learn.lesson import LessonContext, Outcome, Scenario


def run(context: LessonContext) -> Outcome:
    raise NotImplementedError("ordering")


SCENARIO = Scenario(name="ordering", title="ordering", summary="not written yet", run=run)
