"""What ``encodeq up`` starts, each registered on the run's ExitStack as it starts, so Ctrl-C,
SIGTERM or an error stops them in reverse: the workers (warm) first, then the S3 link, then the
embedded S3 server (its last write-behind to disk), then the data directory's lock.

S3: MinIO when one answers at ``ENCODEQ_S3_ENDPOINT``, else the embedded moto server persisted
under ``DATA_DIR/s3`` (console/s3server.py). Either way every client reaches it through a TCP
proxy that ``up`` can cut (console/up/faults.py), listening on the configured endpoint when that
is a free loopback port, so ``encodeq upload`` and the others in another terminal just work.
"""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack, closing, suppress
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

from config.settings import Settings, get_settings
from console.s3server import EmbeddedS3, answers
from console.tcp_proxy import TcpProxy
from console.up.faults import LOOPBACK, StorageLink
from core.layout import RENDITIONS

#: The player (another origin) may read renditions, as MinIO allows by default. With MinIO the
#: URLs are presigned and the buckets private; moto checks no signature at all, so the embedded
#: server is for one user's machine: loopback only, other Host headers refused (s3server.py).
CORS_RULE = {
    "AllowedOrigins": ["*"],
    "AllowedMethods": ["GET", "HEAD"],
    "AllowedHeaders": ["*"],
    "MaxAgeSeconds": 3600,
}


def port_free(port: int | None, host: str = "127.0.0.1") -> bool:
    if not port:
        return False
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        # As the proxy binds it: a restart finds its port free though the last run's
        # connections linger in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def start_storage(data_dir: Path, stack: ExitStack, console: Console) -> StorageLink:
    """S3 behind a proxy ``up`` can cut; ``ENCODEQ_S3_ENDPOINT`` points at the proxy from here
    on (the workers inherit it; the settings cache is cleared)."""
    configured = urlsplit(get_settings().s3_endpoint)
    if answers(configured.geturl()):
        upstream = (configured.hostname or "127.0.0.1", configured.port or 80)
        link_port, kind = None, "minio"
        what = f"the S3 server at {configured.geturl()} (MinIO): it keeps its own objects"
    else:
        server = EmbeddedS3(data_dir=data_dir / "s3")
        server.start()
        stack.callback(server.stop)
        upstream = ("127.0.0.1", server.port)
        free = configured.hostname in LOOPBACK and port_free(configured.port)
        link_port, kind = (configured.port if free else None), "embedded"
        what = f"an embedded S3 server (moto), its objects kept in {data_dir / 's3'}"
        open_cors(get_settings(), RENDITIONS, server.endpoint)
    proxy = TcpProxy(*upstream, port=link_port).start()
    link = StorageLink(proxy, kind)
    stack.callback(link.stop)
    os.environ["ENCODEQ_S3_ENDPOINT"] = proxy.endpoint
    get_settings.cache_clear()
    console.print(f"  S3: {what}, at {proxy.endpoint}", highlight=False, soft_wrap=True)
    return link


def open_cors(settings: Settings, logical: str, endpoint: str | None = None) -> None:
    """Let the player (another origin than S3) read a bucket's objects. MinIO answers CORS for
    every origin by default; moto, standing in for it, only after a bucket CORS rule, which the
    minio SDK cannot set: boto3 (moto's own dependency) can."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint or settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
    )
    bucket = settings.bucket(logical)
    with suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    client.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [CORS_RULE]})
