"""The retry policy: what counts as transient, and how often and how late it is retried.

Transient errors are retried by Celery itself (``autoretry_for``) with exponential backoff and full
jitter; the countdown is held by the broker through native delayed delivery, not by the worker.
Kept small on purpose: each delayed retry re-routes through RabbitMQ's delay exchanges. Once the
budget is spent the task fails, the message is rejected and dead-lettered.
"""

from __future__ import annotations

import socket

import urllib3.exceptions
from kombu.exceptions import OperationalError
from minio.error import ServerError

from config.settings import get_settings

#: Errors that say "try again later": storage or broker unreachable, timeouts talking to them.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    socket.timeout,
    urllib3.exceptions.HTTPError,
    OperationalError,
    ServerError,  # a 5xx from S3 that is not an S3 error document (proxy, restart)
)


def retry_options() -> dict[str, object]:
    """Celery task options that implement the policy; every task uses exactly these."""
    settings = get_settings()
    return {
        "autoretry_for": TRANSIENT_ERRORS,
        "max_retries": settings.max_retries,
        # seconds, doubled each retry (2, 4, 8, 16 by default), capped
        "retry_backoff": settings.retry_backoff_s,
        "retry_backoff_max": settings.retry_backoff_max_s,
        # full jitter: a random countdown between 0 and the backoff
        "retry_jitter": settings.retry_jitter,
    }
