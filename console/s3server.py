"""An embedded S3-protocol server (moto) on loopback, for the demo and the tests.

Production and compose use real MinIO; this exists so ``encodeq demo`` and the test suite can run on
a machine with no S3 server. It speaks S3 over HTTP like MinIO does, so the code under test is the
same ``minio`` SDK code that talks to MinIO.
"""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request
from contextlib import closing


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(endpoint: str, timeout: float = 2.0) -> bool:
    """Whether anything speaks HTTP at ``endpoint`` (an S3 server answers even unauthenticated)."""
    try:
        urllib.request.urlopen(endpoint, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # 403 and friends: a server is there
    except (OSError, ValueError):
        return False
    return True


class EmbeddedS3:
    """``with EmbeddedS3() as endpoint:`` runs a moto S3 server on 127.0.0.1 for the block."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # Imported here: moto takes a third of a second to load, and every ``encodeq`` command
        # loads this module (the demo's); only the demo and the tests ever start the server.
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> str:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request
        self._server.start()
        return self.endpoint

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
