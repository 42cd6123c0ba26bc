"""Upload HLS segments while ffmpeg is still writing the next ones.

ffmpeg writes each segment under a temporary name and renames it when complete
(``hls_flags temp_file``), so a ``.ts`` file in the folder is finished and can go to storage at
once; the encode's tail is then one segment and the playlist, not the whole rendition. The
playlist always goes last: a playlist in storage means all its segments are there.
"""

from __future__ import annotations

import threading
from pathlib import Path

from core.layout import RENDITIONS
from core.storage import Storage
from worker.hls import CONTENT_TYPES

#: How often the folder is looked at while ffmpeg runs.
POLL_S = 0.5


class SegmentUploader:
    """``with SegmentUploader(...) as up: <run ffmpeg>`` then ``up.finish(playlist)``; or just
    ``finish(playlist)`` for a folder that is already complete."""

    def __init__(self, storage: Storage, folder: Path, prefix: str) -> None:
        self.storage, self.folder, self.prefix = storage, folder, prefix
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

    def _upload_ready(self) -> None:
        for path in sorted(self.folder.glob("*.ts")):
            if path.name not in self._done:
                self.storage.put_file(
                    RENDITIONS, self.prefix + path.name, path, CONTENT_TYPES[".ts"]
                )
                self._done.add(path.name)

    def _run(self) -> None:
        try:
            while not self._stop.wait(POLL_S):
                self._upload_ready()
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
        return self.storage.put_file(
            RENDITIONS, self.prefix + playlist.name, playlist, CONTENT_TYPES[".m3u8"]
        )
