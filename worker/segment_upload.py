"""Upload HLS segments while ffmpeg is still writing the next ones.

ffmpeg writes each segment under a temporary name and renames it when complete
(``hls_flags temp_file``), so a ``.ts`` file in the folder is finished and can go to storage at
once; the encode's tail is then one segment and the playlist, not the whole rendition. The
playlist always goes last: a playlist in storage means all its segments are there.

Live (``live=``, per-rung mode): while ffmpeg runs, its playlist is uploaded too each time it
lists a new segment, once every segment it lists is in storage, as ``live.m3u8`` (never over the
finished playlist: a duplicate copy of the encode that dies mid-way must not unfinish a rung).
ffmpeg writes an ``EVENT`` playlist (worker/encoder.py) under a temporary name and renames it, so
it is never read half written; it only grows, and ends with ``#EXT-X-ENDLIST``. A player can
start from segment 0 while the rest is encoded. ``on_live`` runs once, after the first live
upload (or, for an encode faster than that, after ``finish``: the rung plays from its finished
playlist); ``finish`` writes the finished playlist under both names, so a player on the live one
sees it end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from core.layout import LIVE_PLAYLIST_NAME, RENDITIONS
from core.storage import Storage
from worker.hls import CONTENT_TYPES, read_media_playlist_text

#: How often the folder is looked at while ffmpeg runs.
POLL_S = 0.5


class SegmentUploader:
    """``with SegmentUploader(...) as up: <run ffmpeg>`` then ``up.finish(playlist)``; or just
    ``finish(playlist)`` for a folder that is already complete."""

    def __init__(
        self,
        storage: Storage,
        folder: Path,
        prefix: str,
        live: Path | None = None,
        on_live: Callable[[str], None] | None = None,
    ) -> None:
        self.storage, self.folder, self.prefix = storage, folder, prefix
        self.live, self.on_live = live, on_live
        self._live_segments = 0
        self._done: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> SegmentUploader:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def wrote_live(self) -> bool:
        """Whether a live playlist went to storage (its writer then owes the check of
        core/intermediates.remove_if_ended)."""
        return self._live_segments > 0

    def _upload_ready(self) -> None:
        for path in sorted(self.folder.glob("*.ts")):
            if path.name not in self._done:
                self.storage.put_file(
                    RENDITIONS, self.prefix + path.name, path, CONTENT_TYPES[".ts"]
                )
                self._done.add(path.name)

    def _upload_live(self) -> None:
        """The live playlist, when it lists more segments than last time (all in storage)."""
        if self.live is None or not self.live.exists():
            return
        text = self.live.read_text()
        segments = [name for _, name in read_media_playlist_text(text)]
        if len(segments) <= self._live_segments or not set(segments) <= self._done:
            return
        uri = self.storage.put_bytes(
            RENDITIONS, self.prefix + LIVE_PLAYLIST_NAME, text.encode(), CONTENT_TYPES[".m3u8"]
        )
        first = self._live_segments == 0
        self._live_segments = len(segments)
        if first and self.on_live is not None:
            self.on_live(uri)

    def _run(self) -> None:
        try:
            while not self._stop.wait(POLL_S):
                self._upload_ready()
                self._upload_live()
        except BaseException as exc:  # surfaced by finish(); the task retries or fails with it
            self._error = exc

    def finish(self, playlist: Path) -> str:
        """Upload what is left, then the playlist; returns the playlist's URI."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._error is not None:
            raise self._error
        self._upload_ready()
        uri = self.storage.put_file(
            RENDITIONS, self.prefix + playlist.name, playlist, CONTENT_TYPES[".m3u8"]
        )
        if self._live_segments:
            self.storage.put_file(
                RENDITIONS, self.prefix + LIVE_PLAYLIST_NAME, playlist, CONTENT_TYPES[".m3u8"]
            )
        elif self.live is not None and self.on_live is not None:
            self.on_live(uri)  # done before it was ever live: it plays from its finished playlist
        return uri
