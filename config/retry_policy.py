"""The retry policies: a task's (what counts as transient, how often and how late it is retried) and
a broker client's (how it waits for RabbitMQ to answer).

Transient errors are retried by Celery itself (``autoretry_for``) with exponential backoff and full
jitter; the countdown is held by the broker through native delayed delivery, not by the worker.
Kept small on purpose: each delayed retry re-routes through RabbitMQ's delay exchanges. Once the
budget is spent the task fails, the message is rejected and dead-lettered.

Broker clients (the uploader, the events publisher and subscribers, the inspector, the demo) do not
run as tasks: they wait for the broker with kombu's own ``ensure_connection`` / publish retry, all
with the one schedule below; each says only how long it may wait.
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


#: How a broker client waits between attempts to connect or publish: 0.5 s, then 1 s, 1.5 s, 2 s...
BROKER_RETRY_INTERVALS = {"interval_start": 0.5, "interval_step": 0.5, "interval_max": 2.0}


def broker_retry(max_retries: int | None = None, timeout: float | None = None) -> dict[str, object]:
    """kombu ``ensure_connection`` / ``retry_policy`` arguments: the shared schedule, with a bound
    (``max_retries`` attempts after the first, or ``timeout`` seconds in all; None: no bound)."""
    options: dict[str, object] = {"max_retries": max_retries, **BROKER_RETRY_INTERVALS}
    if timeout is not None:
        options["timeout"] = timeout
    return options
