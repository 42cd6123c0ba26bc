"""An embedded S3-protocol server (moto) on loopback, for ``encodeq up``, the demo and the tests.

Production and compose use real MinIO; this exists so ``encodeq up``, ``encodeq demo`` and the
test suite can run on a machine with no S3 server. It speaks S3 over HTTP like MinIO does, so the
code under test is the same ``minio`` SDK code that talks to MinIO.

moto keeps objects in memory. Given a ``data_dir``, the server keeps them there too: the WSGI app
is wrapped so that every write notes what it touched, and a write-behind mirror
(console/s3_mirror.py) copies that to the directory and, on the next start, back. Such a server
has a moto account of its own (moto's state is per process), dropped when it stops, so a second
server in the same process starts from its directory alone, as a new process would.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import secrets
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import urllib3
from minio import Minio

from config.settings import get_settings
from console.s3_mirror import Mirror

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

log = logging.getLogger(__name__)
WRITES = ("PUT", "POST", "DELETE")


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
    except (OSError, ValueError, http.client.HTTPException):
        return False  # nothing, or something that does not speak HTTP
    return True


class EmbeddedS3:
    """``with EmbeddedS3() as endpoint:`` runs a moto S3 server on 127.0.0.1 for the block.

    With ``data_dir`` its buckets outlive it: ``start()`` returns once the directory's objects
    are back in the server, ``stop()`` once every write is in the directory."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(data_dir).absolute() if data_dir is not None else None
        self.mirror: Mirror | None = None
        self._account = f"{secrets.randbelow(9 * 10**11) + 10**11}" if self.data_dir else None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        # Imported here: moto takes a third of a second to load, and every ``encodeq`` command
        # loads this module (the demo's); only some commands ever start the server.
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request
        app: Any = DomainDispatcherApplication(create_backend_app)
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.mirror = Mirror(_client(self.port), self.data_dir)
            app = NoteWrites(app, str(self._account), self.mirror.mark)
        app = loopback_only(app)
        # What moto's ThreadedMotoServer does, around our app: a thread per request (and a
        # shorter poll, so that stop() takes a twentieth of a second, not half of one).
        self._server = make_server("127.0.0.1", self.port, app, threaded=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=f"s3-{self.port}", daemon=True
        )
        self._thread.start()
        if self.mirror is not None:
            try:
                restored = self.mirror.restore()
            except BaseException:
                self._shut_down()
                raise
            log.info("S3: %d objects restored from %s", restored, self.data_dir)
            self.mirror.start()
        return self.endpoint

    def flush(self) -> None:
        """Every write acknowledged so far is on disk when this returns (nothing to do without
        a ``data_dir``)."""
        if self.mirror is not None:
            self.mirror.flush()

    def stop(self, sync: bool = True) -> None:
        """Stop serving; with a ``data_dir``, copy every write to it first. ``sync=False`` is a
        crash (what a SIGKILL would leave), for the tests."""
        if self._server is None:
            return  # never started, or stopped already
        try:
            if self.mirror is not None:
                self.mirror.stop(sync=sync)
        finally:
            self._shut_down()

    def _shut_down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._account is not None:
            _forget_account(self._account)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: Names a request to this server may use for it: moto checks no signature, so a page of another
#: site reaching it through DNS rebinding (a name of its own resolving to 127.0.0.1) must be
#: refused by its Host header, the way the dashboard refuses it (uploader/web/security.py).
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def loopback_only(app: Any) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable]:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable:
        host = environ.get("HTTP_HOST", "127.0.0.1").rsplit(":", 1)[0].strip("[]")
        if host in LOOPBACK_HOSTS or host.endswith(".localhost"):
            return app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "application/xml")])
        return [b"<Error><Code>AccessDenied</Code><Message>loopback only</Message></Error>"]

    return guarded


class NoteWrites:
    """WSGI middleware: after each write, tells ``note`` the bucket and key it touched.

    It also puts the request in the server's own moto account (moto's ``x-moto-account-id``)."""

    def __init__(
        self, app: Any, account: str, note: Callable[[str | None, str | None], None]
    ) -> None:
        self.app = app
        self.account = account
        self.note = note

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable:
        environ["HTTP_X_MOTO_ACCOUNT_ID"] = self.account
        try:
            return self.app(environ, start_response)
        finally:
            # After the write (moto answers from the finished state) and before the answer is
            # sent: a client that saw its write acknowledged finds it marked.
            if environ.get("REQUEST_METHOD") in WRITES:
                try:
                    touched = written(environ)
                except Exception:  # a request this cannot read: compare everything
                    touched = None, None
                if touched is not None:
                    self.note(*touched)


def written(environ: dict[str, Any]) -> tuple[str | None, str | None] | None:
    """(bucket, key) a write touched: key None for the bucket, bucket None for "cannot tell";
    None when it changed no object (a multipart upload's parts; its completion does)."""
    host = environ.get("HTTP_HOST", "").rsplit(":", 1)[0].strip("[]")
    if host not in ("", "localhost") and not _is_ip(host):
        return None, None  # virtual-host style (bucket.host): listing every bucket is safe
    # WSGI hands the path over as latin-1; S3 keys are UTF-8.
    path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or bucket == "moto-api":
        return None, None
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    method = environ.get("REQUEST_METHOD")
    if "uploads" in query or ("uploadId" in query and method != "POST"):
        return None  # a multipart upload begun, a part, an abort: no object changed yet
    return bucket, key or None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _client(port: int) -> Minio:
    """The mirror's own S3 client (moto takes any credentials; these are the project's)."""
    settings = get_settings()
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=120),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        maxsize=8,
    )
    return Minio(
        f"127.0.0.1:{port}",
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        region=settings.s3_region,
        secure=False,
        http_client=http,
    )


def _forget_account(account: str) -> None:
    """Drop a stopped server's buckets from moto's per-process state, so its memory is freed and
    its bucket names (global across accounts, as in AWS) are free for the next server.

    moto internals (5.x): its S3 backend's ``reset()`` would also close every other server's
    objects (it disposes all keys of the process), so this does its per-bucket part by hand."""
    from moto.s3.models import s3_backends

    try:
        backend = s3_backends[account]["aws"]
        for name, bucket in list(backend.buckets.items()):
            for _, versions in bucket.keys.lists():
                for version in versions:
                    version.dispose()
            for part in bucket.multiparts.values():
                part.dispose()
            s3_backends.bucket_accounts.pop(name, None)
        backend.buckets.clear()
    except (AttributeError, KeyError, TypeError) as exc:  # another moto: memory stays, say so
        log.warning("S3: could not drop moto account %s: %r", account, exc)
