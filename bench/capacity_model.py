"""From measured per-job counts to a fleet: the capacity model of bench_capacity.py.

Every count of a job is fitted as ``a + b * seconds`` of source (least squares over the lengths
run), then scaled to ``TARGET``: 10,000 uploads an hour of 10 minutes each. Each figure says what
it rests on: ``measured`` (this run's counts and CPU-seconds, extrapolated by the fit),
``setting`` (the project's defaults), or ``assumed`` (ASSUMED below: change them here).
"""

from __future__ import annotations

import math
from typing import Any

Fit = dict[str, float]
TARGET = {"uploads_per_hour": 10_000, "source_s": 600.0}
ASSUMED: dict[str, Any] = {
    "utilisation": 0.75,  # of a worker core, averaged over the hour (peaks, stragglers, restarts)
    "cores_per_host": 16,  # one `encodeq worker --concurrency 1` per core, as `encodeq up` runs
    "live_views": 3,  # dashboards / `encodeq watch` bound to every event (core/live_feed.py)
    "retention_h": (1, 24),  # hours of jobs in the jobs bucket (the code deletes none)
    "s3_get_latency_s": 0.002,  # one small GET from MinIO on the LAN: caps one janitor's rate
    # How long a job's chunks run on a wide fleet, start to last (the straggler watchdog runs every
    # STRAGGLER_CHECK_S meanwhile): a 4 s chunk's task plus its wait in the queue.
    "chunk_phase_s": 60.0,
    # AWS S3's documented rate per partitioned prefix: the unit S3 capacity is counted in here
    # (MinIO's depends on its drives and nodes: measure it with `warp`).
    "s3_writes_per_s": 3500,
    "s3_reads_per_s": 5500,
    "link_mb_per_s": 1250,  # one 10 GbE link, the unit S3 egress is counted in
}
JANITOR_INTERVAL_S = 60.0  # setting: ENCODEQ_JANITOR_INTERVAL_S, jittered x0.5..1.5 (mean 1)
STRAGGLER_CHECK_S = 10.0  # setting: ENCODEQ_STRAGGLER_CHECK_S
WRITES = ("PUT", "POST", "DELETE")
#: Modes the model scales: their plan is the one at TARGET (``chunked`` has this fleet's plan, 4
#: chunks, which a wide fleet never makes: its fits are kept, not scaled).
MODELLED = ("per-rung", "chunked@4s")


def fit(xs: list[float], ys: list[float]) -> Fit:
    """Least squares ``y = a + b x`` and the largest residual (how straight the line is)."""
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    a = my - b * mx
    worst = max(abs(y - a - b * x) for x, y in zip(xs, ys, strict=True)) if n else 0.0
    return {"a": round(a, 4), "b": round(b, 6), "max_residual": round(worst, 4)}


def fit_all(costs: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Fit]]:
    """Per mode, every metric any of its jobs has (absent: 0) against the source length."""
    fits: dict[str, dict[str, Fit]] = {}
    for mode, jobs in costs.items():
        xs = [float(length) for length in jobs]
        names = sorted({k for cost in jobs.values() for k in cost} - {"wall_s"})
        fits[mode] = {k: fit(xs, [cost.get(k, 0.0) for cost in jobs.values()]) for k in names}
    return fits


def at(fits: dict[str, Fit], name: str, seconds: float) -> float:
    """A fitted count at ``seconds`` of source (0: never seen)."""
    f = fits.get(name)
    return 0.0 if f is None else f["a"] + f["b"] * seconds


#: Per-rung mode's counts that follow the clock, not the source: a progress event every 0.5 s
#: and the rung's record every 5 s while an encode runs (worker/modes/per_rung.py).
TIME_DRIVEN = ("event.rendition.progress", "s3.PUT.jobs.live_record")
#: Chunked mode's reads of the chunk records: each chunk that completes reads every chunk's
#: record (worker/modes/chunked/chunk_tasks.py ``join_when_done``): N completions x N records.
SQUARE = ("s3.GET.jobs.chunk_record", "s3.GET.jobs.live_record")
#: Tasks that read the whole source (through the host cache: once per host and job).
SOURCE_READERS = ("probe", "encode", "encode_chunk", "encode_audio")


def _add(job: dict[str, float], name: str, delta: float) -> None:
    """Change a count and the totals it is part of (``events.total``, ``s3.GET``...)."""
    kind, _, rest = name.partition(".")
    totals = {"event": ["events.total", f"events.{rest.split('.')[0]}"]}.get(kind, [])
    if kind == "s3":
        totals = ["s3.requests", f"s3.{rest.split('.')[0]}"]
    for key in (name, *totals):
        job[key] = job.get(key, 0.0) + delta


def watchdog_parts(job: dict[str, float], doc: dict[str, Any]) -> list[tuple[str, float]]:
    """What one straggler-watchdog run costs a chunked job: its message and events, and a pass
    over the chunk records: 1 + N GETs measured on a finished job, plus (from the code) the job's
    cancellation record and a second GET per chunk still running, half of them on average."""
    found = doc.get("watchdog_pass")
    if "runs.task.watch_chunks" not in job or not found:
        return []
    n = job.get("plan.chunks", 0.0)
    celery = job.get("celeryev.task", 0.0) / max(1.0, job.get("event.task.finished", 0.0))
    return [
        ("runs.task.watch_chunks", 1.0),
        ("published.encodeq.control", 1.0),
        ("published.delayed", 1.0),
        ("event.task.started", 1.0),
        ("event.task.finished", 1.0),
        ("celeryev.task", celery),
        ("s3.GET.jobs.manifest", found["gets_fixed"]),
        ("s3.GET.jobs.other", 1.0),
        ("s3.GET.jobs.chunk_record", found["gets_per_chunk"] * n),
        ("s3.GET.jobs.live_record", 0.5 * n),
    ]


def strip_clock(raw: dict[str, Any], doc: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """Each job's counts less what followed this machine's clock, and the rate of each such count
    per second of a running encode (per-rung mode). The watchdog's runs are taken out whole."""
    jobs = {length: dict(cost) for length, cost in raw.items()}
    seconds = sum(c.get("runs.seconds.encode", 0.0) for c in raw.values())
    rates: dict[str, float] = {}
    if seconds and not any("runs.task.encode_chunk" in c for c in raw.values()):
        for name in TIME_DRIVEN:
            rates[name] = sum(c.get(name, 0.0) for c in raw.values()) / seconds
            for cost in jobs.values():
                _add(cost, name, -cost.get(name, 0.0))
    for cost in jobs.values():
        runs = cost.get("runs.task.watch_chunks", 0.0)
        for name, per_run in watchdog_parts(cost, doc):
            _add(cost, name, -runs * per_run)
    return jobs, rates


def per_job(jobs: dict[str, Any], seconds: float) -> tuple[dict[str, float], dict[str, Fit]]:
    """Every count at ``seconds`` of source from its fit; a count never falls with the length,
    so a negative slope is noise (a duplicate finalize at one length) and the smallest value
    measured stands. Chunked mode's record reads are fitted as ``a + c N^2`` (N chunks)."""
    fits = fit_all({"x": jobs})["x"]
    job = {}
    for name, f in fits.items():
        value = f["a"] + f["b"] * seconds
        if f["b"] < 0:
            value = min(cost.get(name, 0.0) for cost in jobs.values())
        job[name] = max(0.0, value)
    squares = {}
    chunks = [cost.get("plan.chunks", 0.0) for cost in jobs.values()]
    if max(chunks) > 0:
        n2 = job.get("plan.chunks", 0.0) ** 2
        for name in SQUARE:
            q = fit([n * n for n in chunks], [cost.get(name, 0.0) for cost in jobs.values()])
            _add(job, name, q["a"] + q["b"] * n2 - job.get(name, 0.0))
            squares[name] = q
    return job, squares


def _hosts_touched(hosts: float, tasks: float) -> float:
    """Distinct hosts a job's ``tasks`` land on when each goes to any of ``hosts`` at random."""
    return hosts * (1 - (1 - 1 / hosts) ** tasks) if hosts > 1 else min(tasks, 1.0)


def multi_host(job: dict[str, float], hosts: float) -> dict[str, float]:
    """What one host hid: at scale a job's tasks land on many hosts, each downloading the source
    once (host cache), and a join downloads the chunk outputs encoded elsewhere (here every
    fetch after the first hit the one host cache: a HEAD, no GET)."""
    readers = sum(job.get(f"runs.task.{t}", 0.0) for t in SOURCE_READERS)
    touched = _hosts_touched(hosts, readers)
    more_sources = max(0.0, touched - job.get("s3.GET.uploads.source", 0.0))
    fetched = job.get("s3.HEAD.uploads.chunk_output", 0.0)
    more_chunks = max(0.0, fetched - job.get("s3.GET.uploads.chunk_output", 0.0))
    _add(job, "s3.GET.uploads.source", more_sources)
    _add(job, "s3.GET.uploads.chunk_output", more_chunks)
    chunk_bytes = job.get("s3.bytes_in.uploads.chunk_output", 0.0)
    job["s3.bytes_out"] = job.get("s3.bytes_out", 0.0) + (
        more_sources * job.get("source.bytes", 0.0) + (chunk_bytes if more_chunks else 0.0)
    )
    return {"source_downloads": round(touched, 1), "chunk_output_gets": round(fetched, 1)}


def one_ffmpeg_cpu(doc: dict[str, Any], seconds: float) -> float:
    """CPU-seconds of one ffmpeg doing the ladder from one decode, fitted (nan: not measured)."""
    measured = doc.get("one_ffmpeg_cpu_s") or {}
    if len(measured) < 2:
        return math.nan
    line = fit([float(k) for k in measured], list(measured.values()))
    return line["a"] + line["b"] * seconds


def scaled_job(raw: dict[str, Any], doc: dict[str, Any]) -> tuple[dict[str, float], dict]:
    """One job of TARGET's length on a fleet sized for TARGET: the fitted counts, the clock-driven
    ones from their rates (per-rung: as many encodes run as cores are busy, one each; chunked:
    ASSUMED chunk_phase_s of watchdog runs), then what many hosts add."""
    s, per_s = TARGET["source_s"], TARGET["uploads_per_hour"] / 3600
    jobs, rates = strip_clock(raw, doc)
    job, squares = per_job(jobs, s)
    busy = job["cpu.workers_s"] * per_s
    for name, rate in rates.items():
        _add(job, name, rate * busy / per_s)
    runs = ASSUMED["chunk_phase_s"] / STRAGGLER_CHECK_S
    for name, per_run in watchdog_parts(job, doc):
        _add(job, name, runs * per_run)
    hosts = job["cpu.workers_s"] * per_s / ASSUMED["utilisation"] / ASSUMED["cores_per_host"]
    notes: dict[str, Any] = {
        f"{k} per running encode-second": round(v, 3) for k, v in rates.items()
    }
    notes |= {f"{k} = a + c N^2": v for k, v in squares.items()}
    if "runs.task.watch_chunks" in job:
        notes["watchdog runs per job"] = runs
    notes["at scale"] = multi_host(job, hosts)
    return job, notes


def mode_model(raw: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """Rates at TARGET for one mode: cores, messages, events, S3 requests and bytes."""
    s, per_s = TARGET["source_s"], TARGET["uploads_per_hour"] / 3600
    fleet = doc["fleet"]
    job, notes = scaled_job(raw, doc)
    cores = job["cpu.workers_s"] * per_s / ASSUMED["utilisation"]
    queues = {k[10:]: job[k] * per_s for k in job if k.startswith("published.encodeq.")}
    ends = fleet["event_bindings"].get("job.completed", 0) / fleet["workers"]
    events = job.get("events.total", 0.0) * per_s
    idle = fleet["idle_per_worker_per_s"]
    return {
        "cpu_s_per_job": round(job["cpu.workers_s"], 1),
        "cpu_vs_one_ffmpeg": round(job["cpu.workers_s"] / one_ffmpeg_cpu(doc, s), 3),
        "worker_cores": round(cores),
        "hosts": math.ceil(cores / ASSUMED["cores_per_host"]),
        "tasks_per_job": round(job.get("event.task.finished", 0.0), 1),
        "chunks_per_job": round(job.get("plan.chunks", 0.0), 1),
        "messages_per_s": {q: round(v, 1) for q, v in sorted(queues.items())},
        "celery_task_events_per_s": round(job.get("celeryev.task", 0.0) * per_s),
        "celery_heartbeats_per_s": round(idle.get("celeryev.heartbeat", 0.0) * cores),
        "broker_connections": round(fleet["connections_per_worker"] * cores),
        "events_published_per_s": round(events),
        "progress_events_per_s": round(job.get("event.rendition.progress", 0.0) * per_s),
        "events_per_live_view_per_s": round(events),
        "events_delivered_per_s": round(events * ASSUMED["live_views"] + per_s * ends * cores),
        "s3_requests_per_s": {
            v: round(job.get(f"s3.{v}", 0.0) * per_s)
            for v in ("GET", "PUT", "HEAD", "LIST", "DELETE", "POST", "BUCKET")
        },
        "record_gets_per_s": round(sum(job.get(k, 0.0) for k in SQUARE) * per_s),
        "manifest_writes_per_s": round(
            sum(v for k, v in job.items() if k.startswith("s3.PUT.jobs.")) * per_s
        ),
        "job_document_writes_per_s": round(job.get("s3.PUT.jobs.manifest", 0.0) * per_s, 1),
        "s3_mb_in_per_s": round(job.get("s3.bytes_in", 0.0) * per_s / 1e6),
        "s3_mb_out_per_s": round(job.get("s3.bytes_out", 0.0) * per_s / 1e6),
        "notes": notes,
        "per_job": {k: round(v, 3) for k, v in sorted(job.items())},
    }


def janitor_model(doc: dict[str, Any], workers: float) -> dict[str, Any]:
    """GETs/s of every worker's janitor sweeping every stored job each interval, capped by how
    fast one sweep can go (one GET after another)."""
    per_job = doc["janitor"]["requests_per_stored_job"]
    cap = 1 / ASSUMED["s3_get_latency_s"]
    found = {}
    for hours in ASSUMED["retention_h"]:
        stored = TARGET["uploads_per_hour"] * hours
        per_janitor = min(stored * per_job / JANITOR_INTERVAL_S, cap)
        found[f"after_{hours}h"] = {
            "jobs_stored": stored,
            "gets_per_s": round(workers * per_janitor),
        }
    return found


def saturation(m: dict[str, Any], doc: dict[str, Any]) -> list[tuple[str, float]]:
    """Demand / reference at TARGET, largest first. Above 1: more than one unit of it (a prefix
    partition, a 10 GbE link); for a quorum queue or a live view's queue, one Erlang process
    each, more than it can do."""
    ref = doc["broker_reference"]
    queue = ref["quorum_queue"]
    queue_ref = max(1, min(queue["publish_confirmed_per_s"], queue["consume_acked_per_s"]))
    topic = ref["topic_exchange"]
    reads, writes = ASSUMED["s3_reads_per_s"], ASSUMED["s3_writes_per_s"]
    busiest = max(m["messages_per_s"].items(), key=lambda kv: kv[1], default=("-", 0.0))
    s3 = m["s3_requests_per_s"]
    celery = m["celery_task_events_per_s"] + m["celery_heartbeats_per_s"]
    rows = [
        (f"quorum queue {busiest[0]} leader", busiest[1] / queue_ref),
        (
            "encodeq.events publishes",
            m["events_published_per_s"] / topic["publish_confirmed_per_s"],
        ),
        ("celeryev publishes (task events, heartbeats)", celery / topic["publish_confirmed_per_s"]),
        (
            "one live view's queue and consumer",
            m["events_per_live_view_per_s"] / topic["drain_per_s"],
        ),
        ("manifest writes (jobs bucket PUT)", m["manifest_writes_per_s"] / writes),
        ("S3 writes (PUT/POST/DELETE)", sum(s3[v] for v in WRITES) / writes),
        ("S3 reads of the jobs (GET/HEAD/LIST)", (s3["GET"] + s3["HEAD"] + s3["LIST"]) / reads),
        ("of which record GETs (chunked: N^2 a job)", m["record_gets_per_s"] / reads),
        ("janitor GETs after 1 h", m["janitor"]["after_1h"]["gets_per_s"] / reads),
        ("S3 egress vs one 10 GbE link", m["s3_mb_out_per_s"] / ASSUMED["link_mb_per_s"]),
    ]
    return sorted(((name, round(u, 3)) for name, u in rows), key=lambda r: -r[1])


def model(doc: dict[str, Any]) -> dict[str, Any]:
    """Every MODELLED mode of the run at TARGET, with what saturates first."""
    out: dict[str, Any] = {"target": TARGET, "assumed": ASSUMED, "modes": {}}
    for mode in (m for m in MODELLED if m in doc["jobs"]):
        m = mode_model(doc["jobs"][mode], doc)
        m["janitor"] = janitor_model(doc, m["worker_cores"])
        m["saturation"] = saturation(m, doc)
        out["modes"][mode] = m
    return out
