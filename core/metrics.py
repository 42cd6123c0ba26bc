"""Every metric encodeq exports to Prometheus, in one place: its name (``encodeq_``, the unit in
the name), its labels and what it means. The Grafana dashboard (deploy/grafana/dashboards/) and
the tests read the names from here.

Two kinds of exporter serve them:

* **A worker** (``python -m worker``): its pool processes, on every node, record task runs and
  encodes into the objects below. With ``ENCODEQ_METRICS_PORT`` set they write to files in a
  folder of the worker's own (prometheus_client's multi-process mode), and the worker's main
  process, the parent of its nodes, serves them all, summed, on that port (worker/exporter.py).
* **The web service** (``GET /metrics``, uploader/web/metrics.py) computes its own on each
  scrape: jobs by state from the job store, queue depths as its live model last saw them, and
  the uploads it accepted or refused.

Label values come from small sets the code chooses (task kinds, outcomes, error codes, rung
names, queue names, job states), never a job id, a file name or anything an uploader writes: the
series stay few, and a scrape tells nothing private.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

#: Seconds, from a finalize (tenths) to the longest encode the task time limit allows.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)

# --- the worker's: recorded by the pool processes (and the node that sees one die) ------------
TASK_DURATION = Histogram(
    "encodeq_task_duration_seconds",
    "Seconds a task run took, by task kind (probe, encode, encode_chunk, encode_audio, join,"
    " finalize, watch_chunks) and how it ended (ok, retry, dead, failed, cancelled).",
    ["task", "outcome"],
    buckets=DURATION_BUCKETS,
)
TASKS_RUNNING = Gauge(
    "encodeq_tasks_running",
    "Task runs in progress, by task kind (a pool process that dies no longer counts).",
    ["task"],
    multiprocess_mode="livesum",
)
TASK_RETRIES = Counter(
    "encodeq_task_retries_total",
    "Task runs that ended in a retry (published again with a backoff), by task kind.",
    ["task"],
)
DEAD_LETTERS = Counter(
    "encodeq_dead_letters_total",
    "Messages a worker dead-lettered, by task kind ('unknown' for a message naming no task of"
    " ours) and error code (not_a_video, timeout, delivery_limit, undecodable...).",
    ["task", "code"],
)
TASKS_LOST = Counter(
    "encodeq_tasks_lost_total",
    "Task runs whose pool process died under them (killed, out of memory), by task kind.",
    ["task"],
)
RUNG_ENCODE = Histogram(
    "encodeq_rung_encode_seconds",
    "Seconds ffmpeg took to encode one rung of a whole source (per-rung mode; chunked mode's"
    " lowest rung), by rung.",
    ["rung"],
    buckets=DURATION_BUCKETS,
)
CHUNK_ENCODE = Histogram(
    "encodeq_chunk_encode_seconds",
    "Seconds ffmpeg took to encode every rung of one chunk from one decode, by the chunk's top"
    " rung.",
    ["top_rung"],
    buckets=DURATION_BUCKETS,
)
MEDIA_ENCODED = Counter(
    "encodeq_encoded_media_seconds_total",
    "Seconds of source encoded, by rung (a chunk counts for each of its rungs): against"
    " encode seconds, the encode speed.",
    ["rung"],
)

# --- the web service's: computed on each scrape (uploader/web/metrics.py) ---------------------
JOBS = "encodeq_jobs"
OLDEST_QUEUED_JOB = "encodeq_oldest_queued_job_age_seconds"
JOB_STORE_UP = "encodeq_job_store_up"
QUEUE_MESSAGES = "encodeq_queue_messages"
QUEUE_CONSUMERS = "encodeq_queue_consumers"
BROKER_CONNECTED = "encodeq_uploader_broker_connected"
UPLOADS = "encodeq_uploads"  # a counter: exposed as encodeq_uploads_total

#: The web service's metrics: (type, help).
WEB_METRICS: dict[str, tuple[str, str]] = {
    JOBS: ("gauge", "Jobs by state, as the job store holds them."),
    OLDEST_QUEUED_JOB: (
        "gauge",
        "Seconds the oldest job still waiting for its probe has waited (0: none waits).",
    ),
    JOB_STORE_UP: ("gauge", "1 when the last scrape could read the job store, else 0."),
    QUEUE_MESSAGES: (
        "gauge",
        "Messages ready in each work queue and the DLQ, as the uploader last sampled them.",
    ),
    QUEUE_CONSUMERS: ("gauge", "Consumers of each queue, as the uploader last sampled them."),
    BROKER_CONNECTED: (
        "gauge",
        "1 while the uploader follows the broker (its queue samples are current), else 0.",
    ),
    UPLOADS: ("counter", "Uploads through the web service, by result and refusal code."),
}

WORKER_METRICS = (
    TASK_DURATION,
    TASKS_RUNNING,
    TASK_RETRIES,
    DEAD_LETTERS,
    TASKS_LOST,
    RUNG_ENCODE,
    CHUNK_ENCODE,
    MEDIA_ENCODED,
)

_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}


def exposed_names() -> set[str]:
    """Every sample name a scrape of ours can show (``_bucket``/``_sum``/``_count`` of each
    histogram, ``_total`` of each counter): what a dashboard query may name."""
    kinds = [(f.name, f.type) for m in WORKER_METRICS for f in m.describe()]  # "_total" stripped
    kinds += [(name, kind) for name, (kind, _) in WEB_METRICS.items()]
    return {name + suffix for name, kind in kinds for suffix in _SUFFIXES[kind]}


# --- recording: a metric never fails the work it measures -------------------------------------
F = TypeVar("F", bound=Callable[..., None])


def _quiet(record: F) -> F:
    @functools.wraps(record)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            record(*args, **kwargs)
        except Exception:
            logger.warning("could not record metric %s", record.__name__, exc_info=True)

    return wrapper  # type: ignore[return-value]


@_quiet
def run_started(task: str) -> None:
    TASKS_RUNNING.labels(task).inc()


@_quiet
def run_finished(task: str, outcome: str, code: str | None, seconds: float | None) -> None:
    """A run ended (worker/task_events.py's outcomes)."""
    TASKS_RUNNING.labels(task).dec()
    if seconds is not None:
        TASK_DURATION.labels(task, outcome).observe(seconds)
    if outcome == "retry":
        TASK_RETRIES.labels(task).inc()
    elif outcome == "dead":
        DEAD_LETTERS.labels(task, code or "unknown").inc()


@_quiet
def run_lost(task: str, code: str, dead_lettered: bool) -> None:
    """A pool process died under a run: requeued, or dead-lettered at the delivery limit."""
    TASKS_LOST.labels(task).inc()
    if dead_lettered:
        DEAD_LETTERS.labels(task, code).inc()


@_quiet
def message_dead_lettered(task: str, code: str) -> None:
    """A message that never ran (undecodable, unknown task...) was dead-lettered."""
    DEAD_LETTERS.labels(task, code).inc()


@_quiet
def rung_encoded(rung: str, seconds: float, media_seconds: float) -> None:
    RUNG_ENCODE.labels(rung).observe(seconds)
    MEDIA_ENCODED.labels(rung).inc(max(0.0, media_seconds))


@_quiet
def chunk_encoded(rungs: Iterable[str], seconds: float, media_seconds: float) -> None:
    names = list(rungs)
    CHUNK_ENCODE.labels(max(names, key=_lines)).observe(seconds)
    for rung in names:
        MEDIA_ENCODED.labels(rung).inc(max(0.0, media_seconds))


def _lines(rung: str) -> int:
    """``720p`` -> 720: the top rung of a chunk is the one with the most lines."""
    found = re.match(r"\d+", rung)
    return int(found.group()) if found else 0
