"""A few jobs' lives as the events the system publishes (core/events.py), and the fold that
rebuilds a job from them: the 'log' lesson's material.

The routing keys and fields are the ones the uploader and the workers emit (uploader/submit.py,
worker/probe_task.py, worker/modes/per_rung.py, worker/finalize.py, worker/failure_handling.py);
the rungs are the ladder's (config/ladder.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from config.ladder import LADDER

#: What became of each job: most complete, one fails at the probe, one is still encoding.
OUTCOMES = ("completed", "completed", "completed", "failed", "encoding")
#: The job-level states a ``job.*`` event sets.
JOB_STATES = {"queued", "probing", "encoding", "completed", "failed"}

Event = tuple[str, dict[str, Any]]


@dataclass
class JobScript:
    """One job: how it ends (the truth the rebuilt state is checked against) and its events."""

    job_id: str
    outcome: str
    #: The renditions it completes.
    completed: set[str]
    events: list[Event] = field(default_factory=list)


def _encode_events(rng: random.Random, job_id: str, rungs: list[str], done: int) -> list[Event]:
    """Each rung started, halfway, and (the first ``done`` of them) completed."""
    events: list[Event] = []
    for index, rung in enumerate(rungs):
        worker = f"celery@host{rng.randint(1, 3)}.bulk"
        common = {"job_id": job_id, "rendition": rung, "worker": worker}
        events.append(("rendition.started", common))
        events.append(("rendition.progress", {**common, "progress": 50.0, "fps": 120.0}))
        if index < done:
            size = rng.randint(200_000, 4_000_000)
            playlist = f"s3://renditions/{job_id}/{rung}/index.m3u8"
            events.append(
                ("rendition.completed", {**common, "playlist": playlist, "size_bytes": size})
            )
    return events


def _job(rng: random.Random, outcome: str) -> JobScript:
    job_id = f"{rng.getrandbits(128):032x}"
    name = f"upload-{rng.randint(1, 999)}.mp4"
    queued = {"job_id": job_id, "filename": name, "size_bytes": rng.randint(10**6, 10**8)}
    events: list[Event] = [("job.queued", {**queued, "priority": "normal"})]
    events.append(("job.probing", {"job_id": job_id, "worker": "celery@host1.control"}))
    if outcome == "failed":
        failure = {"rendition": None, "code": "not_a_video", "message": "ffprobe could not read it"}
        events.append(("job.failed", {"job_id": job_id, **failure}))
        return JobScript(job_id, outcome, set(), events)
    ladder = list(LADDER)[-rng.randint(2, 4) :]
    rungs = [rung.name for rung in reversed(ladder)]  # smallest first, as they go out
    renditions = [{"name": rung, "state": "pending"} for rung in rungs]
    events.append(("job.encoding", {"job_id": job_id, "renditions": renditions}))
    done = len(rungs) if outcome == "completed" else len(rungs) - 1
    events += _encode_events(rng, job_id, rungs, done)
    if outcome == "completed":
        master = f"s3://renditions/{job_id}/master.m3u8"
        events.append(("job.completed", {"job_id": job_id, "master_playlist": master}))
    return JobScript(job_id, outcome, set(rungs[:done]), events)


def script_jobs(rng: random.Random) -> list[JobScript]:
    outcomes = list(OUTCOMES)
    rng.shuffle(outcomes)
    return [_job(rng, outcome) for outcome in outcomes]


def interleave(rng: random.Random, jobs: list[JobScript]) -> list[Event]:
    """Every job's events as a busy system publishes them: jobs interleaved at random, each job's
    own events in their order."""
    pending = [list(job.events) for job in jobs]
    merged: list[Event] = []
    while any(pending):
        merged.append(rng.choice([events for events in pending if events]).pop(0))
    return merged


def apply(jobs: dict[str, dict[str, Any]], event: dict[str, Any]) -> None:
    """Event sourcing: fold one event into the state of its job (created by its first event)."""
    job = jobs.setdefault(
        event["job_id"], {"state": None, "renditions": {}, "completed": set(), "error": None}
    )
    family, _, what = event["event"].partition(".")
    if family == "job" and what in JOB_STATES:
        job["state"] = what
        if what == "encoding":
            job["renditions"] = {r["name"]: r["state"] for r in event["renditions"]}
        if what == "failed":
            job["error"] = event["code"]
    elif family == "rendition":
        job["renditions"][event["rendition"]] = "completed" if what == "completed" else "encoding"
        if what == "completed":
            job["completed"].add(event["rendition"])
