"""A refusal by what ``encodeq up`` hands the app (the fleet, the lessons): an HTTP status, a
stable code and a message for a person. FastAPI-free, so the console floor raising it loads no web
framework; uploader/web/errors.py reports it like any domain error."""

from __future__ import annotations


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
