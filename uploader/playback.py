"""Playing a job in a browser, finished or still encoding, while every bucket stays private.

The stored playlists use relative URIs (``360p/index.m3u8``, ``seg_00000.ts``), which only work
where the playlists themselves are served from. So the API serves them, rewritten:

* the master playlist: each variant URI becomes the API URL of that rendition's media playlist;
* a media playlist: each segment URI (and any ``URI="..."`` attribute: init sections, keys)
  becomes a presigned S3 GET URL that expires.

The browser then fetches the segments from S3 itself, cross-origin: the page's ``<video
crossorigin>`` needs the S3 server to answer CORS (MinIO does for any origin by default; on AWS
put a CORS rule on the renditions bucket), and the presigned host must be one the browser reaches.

Nothing here lets a client name an object: every key is resolved from the job's manifest and must
stay under the job's own prefix. The rewritten playlists carry expiring URLs, so they are served
with ``Cache-Control: no-store`` and fetched again on the next play.

A ``<video>`` element cannot send the API's bearer token, so our own playlist URLs carry a ticket
(``?ticket=...``, see uploader/web/security.py) when a ``ticket`` function is given: valid for this
one job's playlists and as long as its presigned segment URLs.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import quote, urlencode, urlsplit

from core.job_model import Manifest, is_job_id
from core.layout import RENDITIONS, job_prefix, live_master_key
from core.manifest import JobStore
from core.storage import Storage, parse_uri

#: A segment URL lives at least this long; longer for long videos (see ``segment_expiry``).
MIN_EXPIRY = timedelta(hours=1)
#: S3's upper bound for a presigned URL (SigV4).
MAX_EXPIRY = timedelta(days=7)
_URI_ATTRIBUTE = re.compile(r'URI="([^"]*)"')
MPEGURL = "application/vnd.apple.mpegurl"


class PlaybackError(Exception):
    """The job cannot be played (yet): ``status`` and ``code`` go into the JSON error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def segment_expiry(duration_s: float | None) -> timedelta:
    """Long enough to watch the whole video twice over (pauses), never under an hour."""
    wanted = timedelta(seconds=2 * (duration_s or 0) + 600)
    return min(max(wanted, MIN_EXPIRY), MAX_EXPIRY)


def resolve(playlist_key: str, uri: str, prefix: str) -> str:
    """The object key a playlist's relative ``uri`` names; it must stay under ``prefix``."""
    if urlsplit(uri).scheme or uri.startswith("/"):
        raise PlaybackError(500, "bad_playlist", f"playlist names an absolute URI: {uri!r}")
    key = posixpath.normpath(posixpath.join(posixpath.dirname(playlist_key), uri))
    if not key.startswith(prefix) or ".." in key.split("/"):
        raise PlaybackError(500, "bad_playlist", f"playlist URI leaves the job: {uri!r}")
    return key


def rewrite(text: str, replace: Callable[[str], str]) -> str:
    """Apply ``replace`` to every URI of an HLS playlist: URI lines and ``URI="..."`` attributes."""
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            lines.append("")
        elif line.startswith("#"):
            lines.append(_URI_ATTRIBUTE.sub(lambda m: f'URI="{replace(m.group(1))}"', line))
        else:
            lines.append(replace(line))
    return "\n".join(lines) + "\n"


#: ``ticket(job_id, valid_for)``: a ticket for that job's playlists (see the module doc).
TicketFactory = Callable[[str, timedelta], str]


class Playback:
    """Rewritten playlists of completed jobs."""

    def __init__(
        self, storage: Storage, api_prefix: str = "/api/jobs", ticket: TicketFactory | None = None
    ) -> None:
        self.storage = storage
        self.jobs = JobStore(storage)
        self.api_prefix = api_prefix
        self.ticket = ticket

    def _url(self, job_id: str, path: str, duration_s: float | None) -> str:
        if self.ticket is None:
            return path
        ticket = self.ticket(job_id, segment_expiry(duration_s))
        return f"{path}?{urlencode({'ticket': ticket})}"

    def media_url(self, job_id: str, rendition: str, duration_s: float | None = None) -> str:
        path = f"{self.api_prefix}/{job_id}/hls/{quote(rendition)}/index.m3u8"
        return self._url(job_id, path, duration_s)

    def poster_url(self, manifest: Manifest) -> str | None:
        """The finished job's poster, a presigned URL (None before finalize made one)."""
        if manifest.poster is None:
            return None
        bucket, key = parse_uri(manifest.poster)
        if bucket != self.storage.bucket(RENDITIONS) or not key.startswith(
            job_prefix(manifest.job_id)
        ):
            return None
        expires = segment_expiry(manifest.source.duration)
        return self.storage.presigned_url(RENDITIONS, key, expires)

    def master_url(self, job_id: str, duration_s: float | None = None) -> str:
        return self._url(job_id, f"{self.api_prefix}/{job_id}/hls/master.m3u8", duration_s)

    def _playable(self, job_id: str) -> tuple[Manifest, str]:
        """The job and its master playlist's URI: the finished one, or, while the job encodes,
        the live master of the rungs playable so far (worker/finalize.py
        ``publish_live_master``)."""
        manifest = self.jobs.load(job_id) if is_job_id(job_id) else None
        if manifest is None:
            raise PlaybackError(404, "unknown_job", f"no job {job_id}")
        if manifest.state == "completed" and manifest.master_playlist:
            return manifest, manifest.master_playlist
        if manifest.state == "encoding" and any(r.live_playlist for r in manifest.renditions):
            return manifest, self.storage.uri(RENDITIONS, live_master_key(job_id))
        raise PlaybackError(
            409, "not_playable", f"job {job_id} is {manifest.state} and nothing of it plays yet"
        )

    def _text(self, uri: str) -> tuple[str, str]:
        """(key, text) of a playlist in the renditions bucket."""
        bucket, key = parse_uri(uri)
        if bucket != self.storage.bucket(RENDITIONS):
            raise PlaybackError(500, "bad_playlist", f"playlist outside the renditions: {uri}")
        data = self.storage.get_bytes(RENDITIONS, key)
        if data is None:
            raise PlaybackError(404, "missing_playlist", f"{uri} does not exist")
        return key, data.decode("utf-8")

    def master(self, job_id: str) -> str:
        """The master playlist with each variant pointing at our media playlist endpoint."""
        manifest, master = self._playable(job_id)
        key, text = self._text(master)
        # the live master names a rung's live playlist, which may have finished meanwhile
        by_key = {
            parse_uri(uri)[1]: r.name
            for r in manifest.renditions
            for uri in (r.playlist, r.live_playlist)
            if uri is not None
        }

        def variant(uri: str) -> str:
            name = by_key.get(resolve(key, uri, job_prefix(job_id)))
            if name is None:
                raise PlaybackError(500, "bad_playlist", f"master names no rendition: {uri!r}")
            return self.media_url(job_id, name, manifest.source.duration)

        return rewrite(text, variant)

    def media(self, job_id: str, rendition: str) -> str:
        """One rendition's playlist with each segment a presigned URL."""
        manifest, _ = self._playable(job_id)
        found = [
            uri
            for r in manifest.renditions
            if r.name == rendition and (uri := r.playlist or r.live_playlist)
        ]
        if not found:
            raise PlaybackError(404, "unknown_rendition", f"job {job_id} has no {rendition!r}")
        key, text = self._text(found[0])
        expires = segment_expiry(manifest.source.duration)
        prefix = posixpath.dirname(key) + "/"

        def presign(uri: str) -> str:
            return self.storage.presigned_url(RENDITIONS, resolve(key, uri, prefix), expires)

        return rewrite(text, presign)
