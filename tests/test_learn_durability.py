"""The durability lesson against three scratch RabbitMQ nodes of its own (console/local_cluster.py,
ports 5711-5713: never the run's broker): it passes with the broker's own readings, and fails once
the message is not persistent (the durable queue comes back empty) or the quorum queue has one
replica (nothing serves it while its node is down). About a minute per run: the slow tier.
"""

from __future__ import annotations

import pytest

from console.learn.lesson import Counter, Outcome, SilentNarrator
from console.learn.scenarios import durability
from console.learn.scratch import run_scenario

pytestmark = pytest.mark.slow


def lesson(**knobs: Counter) -> Outcome:
    outcome = run_scenario(durability.SCENARIO, SilentNarrator(), seed=None, knobs=knobs)
    print(outcome.counters)
    return outcome


def test_what_survives_a_killed_node_is_read_back_from_the_broker() -> None:
    outcome = lesson()
    counters = outcome.counters
    assert outcome.verdict == "pass", counters
    assert counters["in_memory_before"] == 1 and counters["in_memory_after_restart"] == "gone"
    assert counters["on_disk_while_down"] == "unavailable"
    assert counters["on_disk_after_restart"] == 1
    assert counters["replicas"] == 3 and counters["replicated_while_down"] == 1


@pytest.mark.parametrize(
    ("knobs", "broken"),
    [
        ({"persistent": False}, "on_disk_after_restart"),
        ({"replicas": 1}, "replicated_while_down"),
    ],
)
def test_without_the_mechanism_the_verdict_fails(knobs: dict[str, Counter], broken: str) -> None:
    outcome = lesson(**knobs)
    assert outcome.verdict == "fail", outcome.counters
    assert outcome.counters[broken] != 1
