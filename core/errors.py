"""Errors with a stable code, the code a failed job carries in its manifest."""

from __future__ import annotations


class PermanentError(Exception):
    """Retrying cannot help: bad input, a broken message, a time budget spent.

    The job is marked failed with ``code`` and the message is dead-lettered at once. Both fields are
    positional args so the exception survives the pool's pickling between worker processes.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InputError(PermanentError):
    """The uploaded file is not something we encode (not a video, too long, too large...)."""


class EncodeError(PermanentError):
    """ffmpeg failed on an input that probed fine."""


#: Codes of a job failed at upload because its probe may not have reached the broker. The publish
#: may have gone through all the same (a confirm lost with the connection): a probe that then
#: arrives finds the job failed with one of these and does its work after all.
PUBLISH_ERRORS = ("broker_unavailable", "publish_failed")
