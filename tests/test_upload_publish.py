"""The uploader's publish at its worst moment: connected, then the broker is gone before the probe
is out. It must wait for the broker as it waits for one that was never there (``broker_wait_s``),
and leave exactly one probe in the queue."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from support.broker import private_vhost, queue_state

import uploader.submit
from config.settings import get_settings
from config.topology import CONTROL_QUEUE_NAME
from console.tcp_proxy import TcpProxy
from core.celery_app import publisher


@pytest.fixture
def proxied_broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, TcpProxy]]:
    """This process's broker, reached through a proxy the test can cut; yields the direct URL."""
    with private_vhost("publish") as direct:
        parts = urlsplit(direct)
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672).start()
        netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
        # Set inside private_vhost's block and put back before it ends: it restores the URL
        # this process had before the test (monkeypatch would restore the deleted vhost's).
        os.environ["ENCODEQ_BROKER_URL"] = urlunsplit(parts._replace(netloc=netloc))
        monkeypatch.setenv("ENCODEQ_BROKER_WAIT_S", "30")
        get_settings.cache_clear()
        publisher.cache_clear()
        try:
            yield direct, proxy
        finally:
            proxy.stop()
            os.environ["ENCODEQ_BROKER_URL"] = direct
            get_settings.cache_clear()
            publisher.cache_clear()


@pytest.mark.parametrize("down_s", [0.3, 2.5])
def test_a_broker_lost_between_connect_and_publish_is_waited_for(
    proxied_broker: tuple[str, TcpProxy], monkeypatch: pytest.MonkeyPatch, down_s: float
) -> None:
    direct, proxy = proxied_broker
    real_declare = uploader.submit.declare_topology
    cuts: list[float] = []

    def declare_after_a_cut(connection) -> None:  # the connection is up: now the broker goes
        if not cuts:
            cuts.append(down_s)
            proxy.cut()
            threading.Timer(down_s, proxy.restore).start()
        real_declare(connection)

    monkeypatch.setattr(uploader.submit, "declare_topology", declare_after_a_cut)
    uploader.submit.publish_probe(uuid.uuid4().hex)
    assert cuts == [down_s]  # the cut happened after the connect, before the publish
    assert queue_state(CONTROL_QUEUE_NAME, direct) == (1, 0)
    assert os.environ["ENCODEQ_BROKER_URL"] != direct  # it went through the proxy
