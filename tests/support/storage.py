"""The run's storage as tests read it: settings, the S3 client, the job store, renditions."""

from __future__ import annotations

import contextlib
from pathlib import Path

from config.settings import Settings
from core.job_model import Manifest
from core.layout import RENDITIONS
from core.manifest import JobStore
from core.storage import Storage, parse_uri
from support.media import decoded_frames
from support.waiting import wait_for


def settings() -> Settings:
    """The settings as this process's environment says now (never a cached copy)."""
    return Settings()


def storage() -> Storage:
    return Storage(settings())


def jobs() -> JobStore:
    return JobStore(storage())


def wait_for_job(job_id: str, timeout: float = 120) -> Manifest:
    """The job's manifest once it is finished (completed or failed)."""
    store = jobs()

    def finished() -> Manifest | None:
        manifest = store.load(job_id)
        return manifest if manifest is not None and manifest.finished else None

    return wait_for(finished, timeout, f"job {job_id} to finish")


def download_rendition(playlist_uri: str, into: Path) -> Path:
    """Copy a rendition (playlist and segments) out of storage; returns the local playlist."""
    _, key = parse_uri(playlist_uri)
    s = storage()
    for name in s.list_keys(RENDITIONS, key.rsplit("/", 1)[0] + "/"):
        s.download(RENDITIONS, name, into / name)
    return into / key


def assert_plays_every_frame(manifest: Manifest, expected: int, into: Path) -> None:
    """The job completed, and each of its rungs, downloaded, decodes to ``expected`` frames."""
    assert manifest.state == "completed", manifest.error
    assert manifest.master_playlist
    for r in manifest.renditions:
        assert r.state == "completed" and r.playlist, r
        assert decoded_frames(download_rendition(r.playlist, into / r.name)) == expected, r.name


def open_cors(logical: str) -> None:
    """Let pages of any origin read a bucket's objects (with a presigned URL: it stays private).

    MinIO answers CORS for every origin by default; moto, standing in for it here, only after a
    bucket CORS rule. A ``<video crossorigin>`` needs it to play HLS segments from S3.
    """
    import boto3  # moto's dependency; only this helper needs an S3 admin call minio lacks

    s = settings()
    client = boto3.client(
        "s3",
        endpoint_url=s.s3_endpoint,
        aws_access_key_id=s.s3_access_key,
        aws_secret_access_key=s.s3_secret_key,
        region_name=s.s3_region,
    )
    bucket = s.bucket(logical)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    rule = {
        "AllowedOrigins": ["*"],
        "AllowedMethods": ["GET", "HEAD"],
        "AllowedHeaders": ["*"],
        "MaxAgeSeconds": 3600,
    }
    client.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [rule]})
