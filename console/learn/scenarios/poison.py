"""PLACEHOLDER: the lesson 'poison' (replace this whole module)."""

from __future__ import annotations

from console.learn.lesson import LessonContext, Outcome, Scenario


def run(context: LessonContext) -> Outcome:
    raise NotImplementedError("poison")


SCENARIO = Scenario(name="poison", title="poison", summary="not written yet", run=run)
