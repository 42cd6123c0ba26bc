"""Test-run isolation: a RabbitMQ vhost and S3 bucket prefix of its own, set up before any import.

The environment is set in ``pytest_configure`` (before test modules import the Celery app, which
reads its settings once), so this process and every ``encodeq worker`` subprocess talk to the same
per-run vhost and buckets. Nothing here is mocked: real RabbitMQ, a real S3 server over HTTP (moto,
standing in for MinIO on machines without it), real ffmpeg.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.s3server import EmbeddedS3

RUN_ID = uuid.uuid4().hex[:8]
VHOST = f"encodeq-test-{RUN_ID}"
_s3: EmbeddedS3 | None = None


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def pytest_configure(config: pytest.Config) -> None:
    global _s3
    if hasattr(config, "workerinput"):  # pragma: no cover - no xdist here, but stay correct
        return
    _rabbitmqctl("add_vhost", VHOST)
    _rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    _s3 = EmbeddedS3()
    endpoint = _s3.start()
    os.environ.update(
        {
            "ENCODEQ_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{VHOST}",
            "ENCODEQ_S3_ENDPOINT": endpoint,
            "ENCODEQ_S3_ACCESS_KEY": "testing",
            "ENCODEQ_S3_SECRET_KEY": "testing",
            "ENCODEQ_BUCKET_PREFIX": f"t{RUN_ID}-",
            # Small and fast, so failure paths finish in seconds.
            "ENCODEQ_DELIVERY_LIMIT": "2",
            "ENCODEQ_MAX_RETRIES": "3",
            "ENCODEQ_RETRY_BACKOFF_S": "1",
            "ENCODEQ_RETRY_BACKOFF_MAX_S": "4",
            "ENCODEQ_X264_PRESET": "ultrafast",
            "ENCODEQ_SEGMENT_SECONDS": "2",
        }
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _s3 is not None:
        _s3.stop()
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", VHOST], capture_output=True, timeout=60
        )


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture
def workers() -> Iterator:
    """Start ``encodeq worker`` subprocesses; every one still running is stopped afterwards."""
    from support import WorkerFleet

    fleet = WorkerFleet()
    try:
        yield fleet
    finally:
        fleet.stop_all()
