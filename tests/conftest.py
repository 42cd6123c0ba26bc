"""Test-run isolation: a RabbitMQ vhost and S3 bucket prefix of its own, planned before any import.

The environment is set in ``pytest_configure`` (before test modules import the Celery app, which
reads its settings once), so this process and every worker subprocess talk to the same per-run
vhost and buckets. Nothing here is mocked: real RabbitMQ, a real S3 server over HTTP (moto,
standing in for MinIO on machines without it), real ffmpeg.

The tiers (markers in pyproject.toml): ``unit`` tests need no broker, no S3 server and no worker,
so the vhost and the S3 server are only brought up once collection has selected a test that is
not ``unit``: ``python3 -m pytest -m unit`` runs with RabbitMQ down. The broker is the one
``ENCODEQ_BROKER_URL`` names (its host, port and user; RabbitMQ's default on 127.0.0.1 unset),
on a vhost of the run's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fleet import WorkerFleet
from support.stack import Stack

_stack: Stack | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _stack
    if hasattr(config, "workerinput"):  # pragma: no cover - no xdist here, but stay correct
        return
    _stack = Stack("test")
    os.environ.update(
        {
            **_stack.env,
            "ENCODEQ_BUCKET_PREFIX": f"t{_stack.run_id}-",
            # Small and fast, so failure paths finish in seconds.
            "ENCODEQ_DELIVERY_LIMIT": "2",
            "ENCODEQ_MAX_RETRIES": "3",
            "ENCODEQ_RETRY_BACKOFF_S": "1",
            "ENCODEQ_RETRY_BACKOFF_MAX_S": "4",
            "ENCODEQ_X264_PRESET": "ultrafast",
            "ENCODEQ_SEGMENT_SECONDS": "2",
        }
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Bring the vhost and S3 up when a selected test needs them (any test not ``unit``)."""
    if _stack is None or session.config.option.collectonly:
        return
    if any(item.get_closest_marker("unit") is None for item in session.items):
        _stack.up()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _stack is not None:
        _stack.down()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture
def workers() -> Iterator[WorkerFleet]:
    """Start worker subprocesses; every one still running is stopped afterwards."""
    fleet = WorkerFleet()
    try:
        yield fleet
    finally:
        fleet.stop_all()
