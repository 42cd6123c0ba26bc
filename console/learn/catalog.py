"""Every lesson, in the order a learner should take them."""

from __future__ import annotations

from console.learn.lesson import Scenario
from console.learn.scenarios import (
    back_pressure,
    competing,
    delivery,
    durability,
    log,
    ordering,
    poison,
    request_reply,
)

SCENARIOS: tuple[Scenario, ...] = (
    competing.SCENARIO,
    delivery.SCENARIO,
    durability.SCENARIO,
    ordering.SCENARIO,
    request_reply.SCENARIO,
    poison.SCENARIO,
    back_pressure.SCENARIO,
    log.SCENARIO,
)


def find(name: str) -> Scenario | None:
    return next((s for s in SCENARIOS if s.name == name), None)
