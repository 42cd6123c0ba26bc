"""PLACEHOLDER: the lesson 'request-reply' (replace this whole module)."""

from __future__ import annotations

from console.learn.lesson import LessonContext, Outcome, Scenario


def run(context: LessonContext) -> Outcome:
    raise NotImplementedError("request-reply")


SCENARIO = Scenario(name="request-reply", title="request-reply", summary="not written yet", run=run)
