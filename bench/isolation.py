"""A vhost and an embedded S3 server of a benchmark's own, so a run never touches anyone's state."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from encodeq.s3server import EmbeddedS3


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def isolated_stack(name: str) -> Iterator[dict[str, str]]:
    """Create vhost ``encodeq-<name>-<id>`` and start S3; point ENCODEQ_* at them; undo on exit.

    Call it before importing anything that reads settings (the Celery app does, once).
    """
    vhost = f"encodeq-{name}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    s3 = EmbeddedS3()
    env = {
        "ENCODEQ_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "ENCODEQ_S3_ENDPOINT": s3.start(),
        "ENCODEQ_S3_ACCESS_KEY": "bench",
        "ENCODEQ_S3_SECRET_KEY": "bench",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3.stop()
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60
        )
