"""PLACEHOLDER: the lesson 'delivery' (replace this whole module)."""

from __future__ import annotations

from console.learn.lesson import LessonContext, Outcome, Scenario


def run(context: LessonContext) -> Outcome:
    raise NotImplementedError("delivery")


SCENARIO = Scenario(name="delivery", title="delivery", summary="not written yet", run=run)
