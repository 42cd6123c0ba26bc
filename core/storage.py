"""Object storage over the S3 protocol (MinIO in compose, any S3 server in tests).

The logical buckets and every key in them are in core/layout.py; here each is named
``<bucket_prefix><name>`` and created private on first use. Every artifact is named by an
``s3://bucket/key`` URI.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import S3Error

from config.settings import Settings, get_settings

#: Multipart part size: large sources go up in parts (and resume part by part on a retry).
PART_SIZE = 16 * 1024 * 1024


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


class Storage:
    """The project's S3 client: bucket naming, JSON documents, files, URIs."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        # Short timeouts and few retries: a storage outage must surface as an error that Celery's
        # retry policy handles, not as a worker stuck inside urllib3.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=120),
            retries=urllib3.Retry(
                total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
            maxsize=10,
        )
        self.client = self._client(self.settings.s3_endpoint, http)
        # Presigning is computed locally (the region is known), so this client never connects.
        public = self.settings.s3_public_endpoint
        self._presigner = self._client(public, http) if public else self.client
        self._ready: set[str] = set()

    def _client(self, url: str, http: urllib3.PoolManager) -> Minio:
        endpoint = urlsplit(url)
        return Minio(
            endpoint.netloc,
            access_key=self.settings.s3_access_key,
            secret_key=self.settings.s3_secret_key,
            region=self.settings.s3_region,
            secure=endpoint.scheme == "https",
            http_client=http,
        )

    # --- naming ------------------------------------------------------------------------------
    def bucket(self, logical: str) -> str:
        return self.settings.bucket(logical)

    def uri(self, logical: str, key: str) -> str:
        return f"s3://{self.bucket(logical)}/{key}"

    def _ensure(self, logical: str) -> str:
        name = self.bucket(logical)
        if name not in self._ready:
            if not self.client.bucket_exists(name):
                try:
                    self.client.make_bucket(name)
                except S3Error as exc:  # another process made it first
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            self._ready.add(name)
        return name

    # --- writing -----------------------------------------------------------------------------
    def put_file(
        self,
        logical: str,
        key: str,
        path: Path,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        progress: Any = None,
    ) -> str:
        return self.put_file_etag(logical, key, path, content_type, metadata, progress)[0]

    def put_file_etag(
        self,
        logical: str,
        key: str,
        path: Path,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        progress: Any = None,
    ) -> tuple[str, str]:
        """``put_file``, also returning the stored object's ETag (a cache entry's name)."""
        bucket = self._ensure(logical)
        written = self.client.fput_object(
            bucket,
            key,
            str(path),
            content_type=content_type,
            metadata=metadata,
            progress=progress,
            part_size=PART_SIZE,
        )
        return self.uri(logical, key), (written.etag or "").strip('"')

    def put_bytes(self, logical: str, key: str, data: bytes, content_type: str) -> str:
        bucket = self._ensure(logical)
        self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        return self.uri(logical, key)

    def put_json(self, logical: str, key: str, document: Any) -> str:
        data = json.dumps(document, indent=2, sort_keys=True).encode()
        return self.put_bytes(logical, key, data, "application/json")

    # --- reading -----------------------------------------------------------------------------
    def get_bytes(self, logical: str, key: str) -> bytes | None:
        """The object's bytes, or None when it (or its bucket) does not exist."""
        try:
            response = self.client.get_object(self.bucket(logical), key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                return None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def get_json(self, logical: str, key: str) -> Any | None:
        data = self.get_bytes(logical, key)
        return None if data is None else json.loads(data)

    def download(self, logical: str, key: str, path: Path) -> None:
        self.client.fget_object(self.bucket(logical), key, str(path))

    def size(self, logical: str, key: str) -> int:
        return self.client.stat_object(self.bucket(logical), key).size

    def list_keys(self, logical: str, prefix: str = "", recursive: bool = True) -> Iterator[str]:
        try:
            for obj in self.client.list_objects(self.bucket(logical), prefix, recursive=recursive):
                yield obj.object_name
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise

    def remove_prefix(self, logical: str, prefix: str) -> int:
        """Delete every object under ``prefix`` (one batched request per thousand); how many."""
        from minio.deleteobjects import DeleteObject

        keys = list(self.list_keys(logical, prefix))
        errors = list(self.client.remove_objects(self.bucket(logical), map(DeleteObject, keys)))
        if errors:
            first = errors[0]
            raise OSError(f"could not delete {first.name}: {first.code} {first.message}")
        return len(keys)

    def presigned_url(self, logical: str, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A time-limited GET URL; buckets stay private."""
        return self._presigner.presigned_get_object(self.bucket(logical), key, expires=expires)
