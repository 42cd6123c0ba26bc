"""The broker-retry policy (config/retry_policy.py) as kombu takes it, with no broker: the kwargs
fit the calls they are made for, and a bounded wait on a closed port ends on schedule."""

from __future__ import annotations

import inspect
import itertools
import time

import pytest
from kombu import Connection
from kombu.exceptions import OperationalError
from kombu.utils.functional import fxrange

from config.retry_policy import BROKER_RETRY_INTERVALS, TRANSIENT_ERRORS, broker_retry
from console.s3server import free_port

pytestmark = pytest.mark.unit


def test_unbounded_by_default_and_bounded_when_asked() -> None:
    assert broker_retry() == {"max_retries": None, **BROKER_RETRY_INTERVALS}
    assert broker_retry(max_retries=3)["max_retries"] == 3
    bounded = broker_retry(timeout=5)
    assert bounded["timeout"] == 5 and bounded["max_retries"] is None


def test_the_schedule_is_half_a_second_growing_to_two() -> None:
    start, step, most = (
        BROKER_RETRY_INTERVALS[k] for k in ("interval_start", "interval_step", "interval_max")
    )
    # kombu's retry_over_time walks this range, capped at interval_max
    every = fxrange(start, most + start, step, repeatlast=True)
    waits = [min(wait, most) for wait in itertools.islice(every, 6)]
    assert waits == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_the_kwargs_fit_kombus_connect_and_publish_retries() -> None:
    conn = Connection("amqp://guest:guest@127.0.0.1:1//")
    # ensure_connection (connect) takes a timeout; Producer.publish's retry_policy goes to ensure
    inspect.signature(conn._ensure_connection).bind(**broker_retry(max_retries=1, timeout=5))
    inspect.signature(conn.ensure).bind(None, print, **broker_retry(max_retries=2))


def test_a_bounded_connect_to_a_closed_port_gives_up_on_schedule() -> None:
    conn = Connection(f"amqp://guest:guest@127.0.0.1:{free_port()}//", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(OperationalError):
        conn.ensure_connection(**broker_retry(max_retries=2))
    # two waits of the schedule (0.5 s + 1 s) and three refused connects: well under 5 s
    assert time.monotonic() - started < 5
    conn.release()


def test_a_broker_outage_is_transient_for_tasks() -> None:
    assert OperationalError in TRANSIENT_ERRORS and ConnectionError in TRANSIENT_ERRORS
