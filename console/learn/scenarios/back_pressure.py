"""PLACEHOLDER: the lesson 'back-pressure' (replace this whole module)."""

from __future__ import annotations

from console.learn.lesson import LessonContext, Outcome, Scenario


def run(context: LessonContext) -> Outcome:
    raise NotImplementedError("back-pressure")


SCENARIO = Scenario(name="back-pressure", title="back-pressure", summary="not written yet", run=run)
