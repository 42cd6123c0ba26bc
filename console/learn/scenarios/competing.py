"""PLACEHOLDER: the lesson 'consumers-vs-pubsub' (replace this whole module)."""

from __future__ import annotations

from console.learn.lesson import LessonContext, Outcome, Scenario


def run(context: LessonContext) -> Outcome:
    raise NotImplementedError("consumers-vs-pubsub")


SCENARIO = Scenario(name="consumers-vs-pubsub", title="consumers-vs-pubsub", summary="not written yet", run=run)
