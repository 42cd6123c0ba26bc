"""Every ENCODEQ_* environment variable, with local defaults.

The defaults point at a local RabbitMQ and MinIO so a developer machine needs no setup; compose and
CI override them through the environment. Nothing secret lives here beyond MinIO's local default.
"""

from __future__ import annotations

import os
import stat
from functools import lru_cache
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.brokers import SEPARATOR, split_broker_urls


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENCODEQ_", extra="ignore")

    # --- connections -------------------------------------------------------------------------
    #: One URL, or several separated by ``;``: a failover list for every client (config/brokers.py).
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    s3_endpoint: str = "http://127.0.0.1:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: str = "minioadmin"
    s3_region: str = "us-east-1"
    #: Where a browser or player reaches S3, when that differs from ``s3_endpoint`` (in compose
    #: the services say ``minio:9000``, the host says ``localhost:9000``). Used only to presign.
    s3_public_endpoint: str = ""
    #: Prepended to every bucket name, so test runs (and tenants) never see each other's objects.
    bucket_prefix: str = ""

    # --- queue topology ----------------------------------------------------------------------
    #: Deliveries a quorum work queue allows before it dead-letters the message (crash loops).
    delivery_limit: int = 4
    #: On a RabbitMQ cluster: replicas of every quorum queue (``x-quorum-initial-group-size``,
    #: leaders spread over the nodes); above 1 the DLQ and the parked queue are quorum queues too,
    #: so dead letters outlive a node (config/topology.py). 0 leaves the arguments out (the
    #: broker's default), as existing queues have them: RabbitMQ refuses to redeclare a queue
    #: with an argument it lacks (PRECONDITION_FAILED), so changing it means new queues.
    quorum_replicas: int = 0

    #: How long an upload waits for an unreachable broker before it fails loudly.
    broker_wait_s: float = 30.0

    # --- limits on untrusted input -----------------------------------------------------------
    max_upload_bytes: int = 4 * 1024**3
    max_duration_s: float = 4 * 3600.0
    max_pixels: int = 4096 * 2304
    max_streams: int = 16
    probe_timeout_s: float = 30.0
    #: Soft time limit of one task (ffmpeg's wall clock sits just above it, Celery's hard limit
    #: above that). Keep RabbitMQ's consumer_timeout (30 min by default) above the hard limit, or
    #: the broker closes the channel of a long late-acked encode: compose raises it to 2 h.
    encode_time_limit_s: int = 1700
    #: An encode that writes more than this many bytes is killed (runaway output).
    max_output_bytes: int = 8 * 1024**3

    # --- encoding ----------------------------------------------------------------------------
    x264_preset: str = "veryfast"
    segment_seconds: int = 4
    audio_bitrate_k: int = 128
    #: Threads per ffmpeg; 0: the cores this worker may use divided among its pool processes
    #: (worker/encoder.py ``encoder_threads``), so ffmpegs of one worker never fight over cores.
    ffmpeg_threads: int = 0
    #: The worker's pool processes: ``python -m worker --concurrency`` sets it for its children.
    worker_concurrency: int = 0
    #: Back-pressure: uploads are refused while the work queues hold this many tasks waiting
    #: (uploader/submit.py); 0: no bound.
    max_queued_tasks: int = 1000
    #: How many of a job's encode tasks wait in the queue or run at once (worker/window.py);
    #: 0: as many as the encode queue has consumers when the job fans out.
    job_window: int = 0
    #: Whether this worker node runs the janitor (worker/janitor.py); ``encodeq worker`` sets it
    #: on one node of its own (the control node, else the worker's own node).
    janitor: bool = True
    #: Normal jobs no longer than this (s) encode in the express lane; longer ones in the bulk
    #: lane (worker/lanes.py).
    express_max_s: float = 120.0
    #: Each lane's node runs at this niceness (nice(2): 0 to 19), so under contention the CPU goes
    #: to the most urgent lane first, and every lane keeps a share (none starves for ever).
    nice_high: int = 0
    nice_express: int = 10
    nice_bulk: int = 19
    #: Drill: a task's process dies (SIGKILL) between recording its work and publishing the
    #: job's next task, on each task's first delivery (the window's hand-over must survive it).
    drill_crash_before_successor: bool = False
    #: Pool processes of the control node a worker starts beside its encode node (probes, joins,
    #: finalize, the straggler watchdog: short tasks that must never wait behind an encode).
    control_concurrency: int = 2
    #: Where workers keep local copies of sources and outputs while they work, the host cache,
    #: and DLQ exports: empty means a per-user private folder (``private_dir``).
    work_dir: str = ""
    #: Disk budget of a host's cache (worker/host_cache.py): least recently used entries no task
    #: holds are evicted past it. A fixed size (the same on every host, easy to reason about),
    #: shrunk on a small or full disk to half of what the cache could take (its own bytes plus
    #: the free space), so the scratch folders on the same disk always keep room to encode.
    host_cache_bytes: int = 10 * 1024**3

    # --- chunk-parallel encoding (worker/modes/chunked/) -----------------------------------------
    #: Chunks per encode consumer the broker reports (the plan's fleet share): 2 keeps a worker
    #: of concurrency 2 busy, or a worker of concurrency 1 busy for two even waves.
    chunks_per_consumer: int = 2
    #: No chunk shorter than this (below it a chunk's fixed cost, about 0.5 s of task, ffmpeg
    #: start and uploads, outweighs spreading it; bench/bench_sweep.py) ...
    min_chunk_s: float = 4.0
    #: ... nor longer than this (long sources get more chunks, a multiple of the fleet share, so
    #: a slow or lost chunk costs little and stragglers can be offered again).
    max_chunk_s: float = 60.0
    #: A fixed chunk length instead of the plan's (tests and benches); 0: planned.
    chunk_seconds: float = 0.0
    #: Sources at least this long default to chunked mode; ``encodeq upload --mode`` overrides.
    #: bench/bench_sweep.py measured chunked ahead of (or level with) per-rung at every length
    #: from 12 s to 60 s on 2 workers; below about two minimum chunks there is nothing to spread,
    #: and one chunk's single ffmpeg would leave cores idle while per-rung's rungs fill them.
    chunked_min_duration_s: float = 10.0
    #: Chunked mode encodes the lowest rung from the whole source in a task of its own (the
    #: job's first), so a job plays seconds after its upload whatever its length; the chunks
    #: encode the other rungs. Costs one more decode of the source (bench/bench_many_jobs.py).
    lowest_rung_whole: bool = True
    #: ... for sources up to this long (s): one task decodes all of it, and must end well inside
    #: the task time limit; a longer source's lowest rung is chunked and plays at its join.
    lowest_rung_whole_max_s: float = 1800.0
    #: A chunk running longer than this many times the median of its finished siblings (and at
    #: least ``straggler_min_s``) is offered to a second worker; the first result wins.
    straggler_factor: float = 3.0
    straggler_min_s: float = 30.0
    #: How often the chunk watchdog looks for stragglers (whole seconds: a Celery countdown).
    straggler_check_s: int = 10
    #: Audio and video durations of a joined rendition may differ by this much (plus a frame).
    seam_av_tolerance_s: float = 0.1

    # --- retry policy (config/retry_policy.py) ---------------------------------------------
    max_retries: int = 4
    #: First backoff step in seconds; doubled each retry, capped, then fully jittered.
    retry_backoff_s: int = 2
    retry_backoff_max_s: int = 60
    #: Full jitter (a random countdown up to the backoff) spreads retries of many tasks apart.
    retry_jitter: bool = True

    # --- drills --------------------------------------------------------------------------------
    #: Task names (comma-separated, e.g. ``encodeq.join``) this worker fails at once with the
    #: permanent error ``injected_fault``: a way to put a message of any kind into the DLQ on
    #: purpose, then "fix the cause" (a worker without it) and replay. Empty in production.
    fail_tasks: str = ""

    # --- the janitor (worker/janitor.py): what no single task is there to clean up ------------
    #: How often each worker's janitor looks (jittered, so many workers do not look at once).
    janitor_interval_s: float = 60.0
    #: A job still ``queued`` this long after its last change may have lost its probe message
    #: (the uploader died between writing the manifest and publishing): its probe is published
    #: again, and a probe that finds the job already claimed does nothing.
    orphan_after_s: float = 900.0
    #: Chunk intermediates of a failed job are kept this long for a replay, then removed.
    intermediates_ttl_s: float = 7 * 86400.0

    # --- events ------------------------------------------------------------------------------
    #: At most one progress event per rendition this often.
    progress_interval_s: float = 0.5

    # --- DLQ inspector (dlq_inspector/) -------------------------------------------------------
    #: Replays a message may have before ``encodeq dlq replay`` parks it instead (``--force``
    #: overrides): a message that keeps dying is not bounced back for ever.
    dlq_max_replays: int = 5

    # --- Celery remote control (core/celery_app.py) -------------------------------------------
    #: Let workers answer Celery's remote control (``celery inspect`` / ``control``; Flower's
    #: worker views need it). Off unless Flower is deployed: any client that can publish to the
    #: ``celery.pidbox`` exchange could otherwise shut every worker down or cancel its queues.
    remote_control: bool = False

    # --- HTTP API (uploader/web/) ---------------------------------------------------------------
    #: Bearer token every ``/api/*`` route but health requires; empty means ``encodeq serve``
    #: generates a random one at start and prints a ready link (``http://HOST:PORT/#token=...``).
    api_token: str = ""
    #: Host names (comma-separated) the HTTP service answers besides loopback and its bind
    #: address, e.g. ``encodeq.example.org``; any other ``Host`` header gets 400 (DNS rebinding).
    allowed_hosts: str = ""

    # --- Prometheus metrics (core/metrics.py) --------------------------------------------------
    #: The port a worker serves ``/metrics`` on (one exporter per ``python -m worker``, for all
    #: its nodes and pool processes: worker/exporter.py); 0: no exporter.
    metrics_port: int = 0
    #: Where that exporter listens: loopback unless a scraper on another host must reach it.
    metrics_host: str = "127.0.0.1"

    # --- least-privilege storage users (console/minio_setup.py, ``encodeq minio-setup``) ---------
    #: The users ``encodeq minio-setup`` creates (with the root key in ENCODEQ_S3_*); each
    #: service then runs with its own pair as ENCODEQ_S3_ACCESS_KEY/SECRET_KEY.
    worker_s3_access_key: str = ""
    worker_s3_secret_key: str = ""
    dashboard_s3_access_key: str = ""
    dashboard_s3_secret_key: str = ""

    @property
    def hard_time_limit_s(self) -> int:
        """Celery's hard time limit, above the soft one: the soft one raises inside the task and
        dead-letters; the hard one only fires if the task ignores it (and then Celery requeues,
        so the delivery limit ends the loop)."""
        return self.encode_time_limit_s + 30

    @field_validator("broker_url")
    @classmethod
    def _failover_list(cls, value: str) -> str:
        """``a; b;`` as ``a;b``: kombu splits on ``;`` as it is, and takes a blank for localhost."""
        return SEPARATOR.join(split_broker_urls(value))

    def private_dir(self, name: str = "") -> Path:
        """A folder only this user can enter (0700): ``work_dir``, else the user's cache folder
        (``$XDG_CACHE_HOME/encodeq``), never a shared /tmp where another user could plant
        files or links under names we are about to use. ``name``: a subfolder, made 0700 too."""
        if self.work_dir:
            base = Path(self.work_dir)
        else:
            cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            base = Path(cache) / "encodeq"
        folder = base / name if name else base
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for part in (base, folder):
            status = part.lstat()
            if stat.S_ISLNK(status.st_mode) or status.st_uid != os.geteuid():
                # planted by someone else (or a link to somewhere else): never work in it
                raise PermissionError(f"{part} is not a folder of this user's own")
            if status.st_mode & 0o077:
                part.chmod(0o700)
        return folder

    def bucket(self, name: str) -> str:
        """The real name of a logical bucket (uploads, jobs, renditions, failures)."""
        return f"{self.bucket_prefix}{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
