"""The upload's progress bar, shared by ``encodeq upload`` and the demo so both look the same."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn


def upload_progress(console: Console) -> Progress:
    """Bytes sent, speed: one line per file."""
    return Progress(
        "{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console
    )


class UploadBar:
    """minio's progress protocol (set_meta/update) driving a Rich bar."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label = progress, label
        self.task = progress.add_task(label, total=None)

    def set_meta(self, object_name: str, total_length: int) -> None:
        self.progress.update(self.task, total=total_length)

    def update(self, length: int) -> None:
        self.progress.advance(self.task, length)
