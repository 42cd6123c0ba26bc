"""The TCP proxy between ``encodeq up``'s clients and S3 (and the tests' S3 faults): it forwards
whatever comes, waits on a slow upstream as long as the upstream takes, frees every connection it
is done with, refuses connections while cut and forwards again once restored."""

from __future__ import annotations

import random
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from console.tcp_proxy import TcpProxy

pytestmark = pytest.mark.unit


class _Echo(socketserver.BaseRequestHandler):
    """Echoes one message after the delay it asks for (``<delay>|<payload>``)."""

    def handle(self) -> None:
        data = self.request.recv(65536)
        delay, _, payload = data.partition(b"|")
        time.sleep(float(delay))  # the upstream's own silence: what the test is about
        self.request.sendall(payload)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = TcpProxy("127.0.0.1", server.server_address[1]).start()
    yield proxy
    proxy.cut()
    server.shutdown()
    server.server_close()


def _ask(proxy: TcpProxy, payload: bytes, delay: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as conn:
        conn.sendall(f"{delay}|".encode() + payload)
        return conn.recv(65536)


def test_forwards_and_frees_every_connection(proxy: TcpProxy) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    for _ in range(60):
        payload = rng.randbytes(rng.randrange(1, 4096))
        assert _ask(proxy, payload) == payload
    deadline = time.monotonic() + 10
    while proxy._open and time.monotonic() < deadline:  # the pumps close as they finish
        time.sleep(0.01)
    assert not proxy._open, len(proxy._open)


def test_waits_on_an_upstream_slower_than_its_connect_timeout(proxy: TcpProxy) -> None:
    assert _ask(proxy, b"late", delay=6.0) == b"late"  # connecting is bounded at 5 s; this is not


def test_refuses_while_cut_and_forwards_once_restored(proxy: TcpProxy) -> None:
    proxy.cut()
    assert proxy.is_cut
    with pytest.raises(ConnectionRefusedError):
        _ask(proxy, b"x")
    proxy.restore()
    assert not proxy.is_cut and _ask(proxy, b"back") == b"back"
