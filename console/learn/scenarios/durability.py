"""PLACEHOLDER: the lesson 'durability' (replace this whole module)."""

from __future__ import annotations

from console.learn.lesson import LessonContext, Outcome, Scenario


def run(context: LessonContext) -> Outcome:
    raise NotImplementedError("durability")


SCENARIO = Scenario(name="durability", title="durability", summary="not written yet", run=run)
