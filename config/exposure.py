"""Refusing well-known secrets where someone other than this machine's users could try them.

The local defaults (RabbitMQ's ``guest``/``guest``, MinIO's ``minioadmin``/``minioadmin``, the old
compose API token ``encodeq-local-token``) are printed in every tutorial. They are fine while the
service that checks them listens on loopback only; anywhere else they are an open door. So every
long-running command (``encodeq serve``, ``encodeq worker``) calls ``check_default_secrets`` before
it connects or listens: a broker or S3 URL whose host is not loopback, or a bind address that is
not, combined with one of these secrets, stops the command with a message that says what to set.

One place for the rule, so the worker and the web server cannot drift apart.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote, urlsplit

from config.brokers import broker_urls
from config.settings import Settings

#: Secrets every attacker tries first (passwords, S3 secret keys, API tokens).
KNOWN_DEFAULT_SECRETS = frozenset({"guest", "minioadmin", "encodeq-local-token"})
#: Addresses that mean "every interface": not loopback.
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


class DefaultSecretError(Exception):
    """A well-known secret guards something reachable off loopback; the message says what to do."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``).

    Any other name may resolve anywhere (in compose ``rabbitmq`` is another container), so it
    counts as reachable from elsewhere.
    """
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_secret(url: str) -> tuple[str, str | None]:
    """(host, password) of one URL. An AMQP URL without a password (``amqp://guest@host//``,
    ``amqp://guest:@host//``, or none at all) logs in with kombu's default password ``guest``;
    other URLs without one give None."""
    parts = urlsplit(url.strip())
    if parts.password:
        password: str | None = unquote(parts.password)
    elif parts.scheme.startswith(("amqp", "pyamqp")):
        password = "guest"  # no password (or an empty one): kombu logs in with guest's
    else:
        password = None
    return parts.hostname or "", password


def exposed_defaults(settings: Settings, bind_host: str | None = None) -> list[str]:
    """Each place where a well-known secret meets a non-loopback address, as a sentence."""
    found = []
    for url in broker_urls(settings):
        host, password = _url_secret(url)
        if password in KNOWN_DEFAULT_SECRETS and not is_loopback(host):
            found.append(
                f"the broker at {host} is reached with the well-known password {password!r}"
                " (set a real one in ENCODEQ_BROKER_URL, and RABBITMQ_DEFAULT_PASS in compose)"
            )
    if settings.s3_secret_key in KNOWN_DEFAULT_SECRETS:
        for url in filter(None, (settings.s3_endpoint, settings.s3_public_endpoint)):
            host, _ = _url_secret(url)
            if not is_loopback(host):
                found.append(
                    f"the S3 server at {host} is reached with the well-known secret key"
                    f" {settings.s3_secret_key!r} (set ENCODEQ_S3_ACCESS_KEY and"
                    " ENCODEQ_S3_SECRET_KEY to a user of its own)"
                )
                break
    listening_off_loopback = bind_host is not None and not is_loopback(bind_host)
    if listening_off_loopback and settings.api_token in KNOWN_DEFAULT_SECRETS:
        found.append(
            f"the API listens on {bind_host or 'every interface'} with the well-known token"
            f" {settings.api_token!r} (unset ENCODEQ_API_TOKEN to have one generated, or set a"
            " random one)"
        )
    return found


def check_default_secrets(settings: Settings, bind_host: str | None = None) -> None:
    """Raise ``DefaultSecretError`` when a well-known secret is used off loopback."""
    found = exposed_defaults(settings, bind_host)
    if found:
        raise DefaultSecretError(
            "refusing to start with a well-known default secret off loopback: " + "; ".join(found)
        )
