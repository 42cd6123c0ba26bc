"""The run's storage as tests read it: settings, the S3 client, the job store, renditions."""

from __future__ import annotations

from pathlib import Path

from config.settings import Settings
from console.up import stack
from core.job_model import Manifest
from core.layout import RENDITIONS, job_prefix
from core.manifest import JobStore
from core.storage import Storage, parse_uri
from support.media import decoded_frames
from support.waiting import wait_for
from worker.hls import read_media_playlist_text


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


def stray_renditions(manifest: Manifest, store: Storage | None = None) -> list[str]:
    """Objects under a completed job's renditions that neither its master, its poster nor its
    rungs' playlists name: a live playlist or live master left behind, a segment of another cut,
    what a late duplicate of a task could leave. A finished job has none."""
    store = store or storage()
    named = {parse_uri(uri)[1] for uri in (manifest.master_playlist, manifest.poster) if uri}
    for r in manifest.renditions:
        assert r.playlist, r
        key = parse_uri(r.playlist)[1]
        folder = key.rsplit("/", 1)[0]
        text = store.get_bytes(RENDITIONS, key).decode()
        named |= {key} | {f"{folder}/{name}" for _, name in read_media_playlist_text(text)}
    return sorted(set(store.list_keys(RENDITIONS, job_prefix(manifest.job_id))) - named)


def open_cors(logical: str) -> None:
    """Let pages of any origin read a bucket's objects, as ``encodeq up`` does for its embedded
    server (MinIO does it by default): a ``<video crossorigin>`` needs it to play from S3."""
    stack.open_cors(settings(), logical)
