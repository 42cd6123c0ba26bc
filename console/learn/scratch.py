"""The scratch space a lesson runs in, and the runner the CLI and the dashboard share.

A lesson breaks things on purpose (kills workers, dead-letters messages), so it never runs where
real jobs are: it gets a RabbitMQ vhost of its own, created before and deleted after the run
(console/learn/broker_admin.py), and S3 buckets of its own (a bucket prefix no one else uses, on
the configured S3 server when one answers, else on an embedded one started for the run, as the
demo does). Everything is made and undone around ``run_scenario``, however the run ends.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from kombu import Connection
from minio import Minio
from minio.deleteobjects import DeleteObject

from config.retry_policy import broker_retry
from config.settings import Settings, get_settings
from console.learn.broker_admin import AdminUnavailable, BrokerAdmin, QueueCounts, admin_for
from console.learn.lesson import Counter, LessonContext, Narrator, Outcome, Scenario
from console.s3server import EmbeddedS3, answers
from core.storage import Storage

log = logging.getLogger(__name__)


#: What may run around a lesson, given its scratch vhost's broker URL.
Watch = Callable[[str], AbstractContextManager[object]]


class ScratchError(RuntimeError):
    """The lesson cannot run here (no broker, no way to make a vhost); the message says why."""


@dataclass
class Scratch:
    """Where one run happens: its vhost's URL(s), its ``ENCODEQ_*``, its folder."""

    broker_url: str
    vhost: str
    env: dict[str, str]
    workdir: Path
    admin: BrokerAdmin
    #: Whether S3 is an embedded server started for this run.
    embedded_s3: bool

    @property
    def settings(self) -> Settings:
        return settings_of(self.env)

    def queues(self) -> dict[str, QueueCounts]:
        """Every queue of the scratch vhost as the broker counts it (ready, unacked, consumers)."""
        return self.admin.queues(self.vhost)


def settings_of(env: Mapping[str, str]) -> Settings:
    """The ``Settings`` of a scratch space's ``ENCODEQ_*`` (the rest from this process's
    environment), without touching the process-wide settings other code reads."""
    fields = {
        key.removeprefix("ENCODEQ_").lower(): value
        for key, value in env.items()
        if key.startswith("ENCODEQ_")
    }
    return Settings(**fields)


def scratch_urls(broker_url: str, vhost: str) -> str:
    """Every URL of a ``;``-separated (failover) list, pointed at ``vhost``."""
    urls = []
    for url in broker_url.split(";"):
        parts = urlsplit(url.strip())
        urls.append(
            urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, ""))
        )
    return ";".join(urls)


def check_broker(broker_url: str) -> None:
    """ScratchError when RabbitMQ does not answer (one retry on the shared schedule)."""
    try:
        with Connection(broker_url, connect_timeout=5) as connection:
            connection.ensure_connection(**broker_retry(max_retries=1))
    except Exception as exc:
        shown = Connection(broker_url.split(";")[0]).as_uri()
        raise ScratchError(f"RabbitMQ does not answer at {shown}: {exc}") from None


@contextmanager
def scratch_vhost(admin: BrokerAdmin, broker_url: str, name: str) -> Iterator[tuple[str, str]]:
    """A vhost ``encodeq-learn-<name>-<random>`` for the block: (its name, its URL list)."""
    vhost = f"encodeq-learn-{name}-{uuid.uuid4().hex[:6]}"
    user = urlsplit(broker_url.split(";")[0].strip()).username or "guest"
    admin.add_vhost(vhost, user)
    try:
        yield vhost, scratch_urls(broker_url, vhost)
    finally:
        try:
            admin.delete_vhost(vhost)
        except Exception as exc:  # cleanup: say so, never mask the run's own outcome
            log.warning("could not delete the scratch vhost %s: %s", vhost, exc)


def s3_env(stack: ExitStack, prefix: str) -> tuple[dict[str, str], bool]:
    """S3 for the run: the configured server when it answers, else an embedded one (stopped with
    ``stack``); buckets under ``prefix``, emptied and removed afterwards. (env, embedded)."""
    settings = get_settings()
    endpoint, embedded = settings.s3_endpoint, False
    if not answers(endpoint):
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request log
        server = EmbeddedS3()
        endpoint, embedded = server.start(), True
        stack.callback(server.stop)
    env = {
        "ENCODEQ_S3_ENDPOINT": endpoint,
        "ENCODEQ_S3_ACCESS_KEY": settings.s3_access_key,
        "ENCODEQ_S3_SECRET_KEY": settings.s3_secret_key,
        "ENCODEQ_BUCKET_PREFIX": prefix,
    }
    if not embedded:
        stack.callback(remove_buckets, settings_of(env), prefix)
    return env, embedded


def remove_buckets(settings: Settings, prefix: str) -> None:
    """Delete every bucket named ``prefix...`` and what it holds (cleanup: never raises)."""
    client: Minio = Storage(settings).client
    with suppress(Exception):
        for bucket in client.list_buckets():
            if not bucket.name.startswith(prefix):
                continue
            keys = (o.object_name for o in client.list_objects(bucket.name, recursive=True))
            for error in client.remove_objects(bucket.name, map(DeleteObject, keys)):
                log.warning("could not delete %s: %s", error.name, error.message)
            client.remove_bucket(bucket.name)


@contextmanager
def scratch_space(name: str) -> Iterator[Scratch]:
    """A vhost, S3 buckets and a folder of the run's own, all removed when the block ends."""
    broker_url = get_settings().broker_url
    check_broker(broker_url)
    try:
        admin = admin_for(broker_url)
    except AdminUnavailable as exc:
        raise ScratchError(str(exc)) from None
    run_id = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        vhost, url = stack.enter_context(scratch_vhost(admin, broker_url, name))
        s3, embedded = s3_env(stack, f"learn-{run_id}-")
        folder = Path(tempfile.mkdtemp(prefix=f"encodeq-learn-{name}-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        env = {"ENCODEQ_BROKER_URL": url, **s3, "ENCODEQ_WORK_DIR": str(folder / "work")}
        yield Scratch(url, vhost, env, folder, admin, embedded)


def check_knobs(scenario: Scenario, knobs: Mapping[str, Counter]) -> None:
    """ValueError naming the knobs ``scenario`` does not read (a typo must not pass silently)."""
    unknown = sorted(set(knobs) - set(scenario.knobs))
    if unknown:
        known = ", ".join(sorted(scenario.knobs)) or "none"
        raise ValueError(f"{scenario.name} has no knob {', '.join(unknown)} (its knobs: {known})")


def run_scenario(
    scenario: Scenario,
    narrator: Narrator,
    seed: int | None = None,
    knobs: Mapping[str, Counter] | None = None,
    watch: Watch | None = None,
) -> Outcome:
    """Run ``scenario`` in a scratch space of its own and return its outcome; the scratch space
    is gone when this returns or raises. ``seed`` None: a random one (``context.rng``).
    ``watch``: entered with the scratch vhost's broker URL around the run (the dashboard relays
    the lesson's task events with it: console/learn/event_relay.py)."""
    knobs = dict(knobs or {})
    check_knobs(scenario, knobs)
    rng = random.Random(seed if seed is not None else random.SystemRandom().randrange(2**32))
    with scratch_space(scenario.name) as scratch:
        narrator.step(
            f"scratch space: vhost {scratch.vhost} ({scratch.admin.how}), S3 buckets"
            f" {scratch.env['ENCODEQ_BUCKET_PREFIX']}*"
            + (" on an embedded S3 server" if scratch.embedded_s3 else "")
        )
        context = LessonContext(
            broker_url=scratch.broker_url,
            narrator=narrator,
            rng=rng,
            knobs={**scenario.knobs, **knobs},
            env=scratch.env,
            workdir=scratch.workdir,
        )
        with watch(scratch.broker_url) if watch is not None else nullcontext():
            return scenario.run(context)
