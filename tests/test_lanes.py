"""The encode lanes and a worker's nodes, as plans (no broker): which lane a job's encodes wait
in, and which node a worker runs for each queue at which niceness."""

from __future__ import annotations

import random

import pytest

from config.settings import Settings, get_settings
from config.topology import (
    CONTROL_QUEUE_NAME,
    ENCODE_EXPRESS_QUEUE_NAME,
    ENCODE_HIGH_QUEUE_NAME,
    ENCODE_LANES,
    ENCODE_QUEUE_NAME,
    with_lanes,
)
from worker.lanes import lane_for
from worker.nodes import hostname_of, plan

pytestmark = pytest.mark.unit


def test_a_job_waits_in_the_lane_of_its_priority_and_length(monkeypatch) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    limit = rng.uniform(10, 600)
    monkeypatch.setenv("ENCODEQ_EXPRESS_MAX_S", str(limit))
    get_settings.cache_clear()
    try:
        for _ in range(200):
            duration = rng.uniform(0.5, 4 * limit)
            short = duration <= limit
            assert lane_for("high", duration) == ENCODE_HIGH_QUEUE_NAME
            expected = ENCODE_EXPRESS_QUEUE_NAME if short else ENCODE_QUEUE_NAME
            assert lane_for("normal", duration) == expected
    finally:
        get_settings.cache_clear()


def test_the_encode_queue_brings_every_lane_and_each_queue_gets_a_node() -> None:
    settings = Settings(nice_high=0, nice_express=10, nice_bulk=19, control_concurrency=2)
    own, forked = plan([CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME], 3, settings)
    nodes = {n.queue: n for n in (own, *forked)}
    assert set(nodes) == {CONTROL_QUEUE_NAME, *ENCODE_LANES}
    assert own.queue == ENCODE_EXPRESS_QUEUE_NAME  # where short jobs run: the worker's own node
    assert nodes[CONTROL_QUEUE_NAME].concurrency == 2
    assert all(nodes[q].concurrency == 3 for q in ENCODE_LANES)
    # the most urgent lane is the least nice; control work is never niced
    nice = [nodes[q].nice for q in ENCODE_LANES]
    assert nice == sorted(nice) and nice[0] < nice[-1]
    assert nodes[CONTROL_QUEUE_NAME].nice == 0
    names = {hostname_of("w@h", n) for n in forked}
    assert len(names) == len(forked) and all(n.startswith("w@h.") for n in names)


def test_a_worker_on_one_queue_runs_that_node_alone() -> None:
    settings = Settings()
    for queue in (CONTROL_QUEUE_NAME, ENCODE_HIGH_QUEUE_NAME, ENCODE_EXPRESS_QUEUE_NAME):
        own, forked = plan([queue], 1, settings)
        assert own.queue == queue and forked == []
    assert with_lanes([ENCODE_QUEUE_NAME]) == [ENCODE_QUEUE_NAME, *ENCODE_LANES[:2]]
