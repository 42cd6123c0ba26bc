"""An isolated stack: a RabbitMQ vhost and an embedded S3 server of a run's own.

Planned first (names, URLs, a port: nothing contacted), brought up only when something needs it:
the test session plans one at configure time, so every module imports with its settings, and
brings it up only when a selected test is not ``unit`` (the unit tier runs with no broker).
The benches use ``isolated_stack``, which does both at once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from console.s3server import EmbeddedS3
from support.broker import add_vhost, delete_vhost, vhost_url


class Stack:
    """A vhost ``encodeq-<name>-<id>`` and an S3 server, with the ``ENCODEQ_*`` that name them."""

    def __init__(self, name: str, access_key: str = "testing") -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.vhost = f"encodeq-{name}-{self.run_id}"
        self.broker_url = vhost_url(self.vhost)
        self.s3 = EmbeddedS3()
        self.access_key = access_key
        self.running = False

    @property
    def env(self) -> dict[str, str]:
        return {
            "ENCODEQ_BROKER_URL": self.broker_url,
            "ENCODEQ_S3_ENDPOINT": self.s3.endpoint,
            "ENCODEQ_S3_ACCESS_KEY": self.access_key,
            "ENCODEQ_S3_SECRET_KEY": self.access_key,
        }

    def up(self) -> None:
        """Create the vhost and start S3 (once)."""
        if not self.running:
            add_vhost(self.vhost, like=self.broker_url)
            self.s3.start()
            self.running = True

    def down(self) -> None:
        if self.running:
            self.s3.stop()
            delete_vhost(self.vhost)
            self.running = False


@contextmanager
def isolated_stack(name: str, access_key: str = "bench") -> Iterator[dict[str, str]]:
    """A stack for the block, with ENCODEQ_* pointed at it (and put back afterwards).

    Enter it before importing anything that reads settings once (the Celery app does)."""
    stack = Stack(name, access_key)
    stack.up()
    try:
        with patched_environ(stack.env):
            yield stack.env
    finally:
        stack.down()


@contextmanager
def patched_environ(env: dict[str, str]) -> Iterator[None]:
    """``env`` in ``os.environ`` for the block; every key put back (or removed) afterwards."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
