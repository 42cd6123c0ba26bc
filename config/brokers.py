"""The broker URLs of ``ENCODEQ_BROKER_URL``: one, or several separated by ``;`` (failover).

kombu (so Celery) reads the same string as a failover list: it connects to the first URL and, when
that node does not answer or its connection dies, moves on to the next. Every client hands kombu
the whole string; what needs one URL at a time (the check for well-known secrets, ``encodeq up``'s
local restart) asks here, so nothing else splits the string its own way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # settings.py normalises the list with split_broker_urls: no import circle
    from config.settings import Settings

#: How kombu and Celery separate the URLs of a failover list.
SEPARATOR = ";"


def split_broker_urls(value: str) -> list[str]:
    """Each URL of a failover list, in order, blanks dropped (kombu would take a blank entry,
    as after a trailing ``;``, for ``localhost``: Settings hands kombu the list without them)."""
    return [url.strip() for url in value.split(SEPARATOR) if url.strip()]


def broker_urls(settings: Settings) -> list[str]:
    """The URLs ``ENCODEQ_BROKER_URL`` names, the one clients try first at the head."""
    return split_broker_urls(settings.broker_url)


def connect_retries(broker_url: str, retries: int = 1) -> int:
    """kombu's ``max_retries`` for a client that would retry ``retries`` times on one broker: as
    many rounds over the failover list ``broker_url`` (kombu counts every node's attempt as a
    retry, and waits on its schedule only after a round), so a client that tries a few times tries
    every node."""
    return max(retries, (retries + 1) * len(split_broker_urls(broker_url)) - 1)
