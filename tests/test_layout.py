"""The object layout (core/layout.py) without any storage: every key of a job lies under that job's
prefix, no task id can shape a failure record's key, and audit keys sort by time."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from core import layout

pytestmark = pytest.mark.unit

JOB = uuid.uuid4().hex
#: Every key builder that takes a job id, with the other arguments a real call passes.
JOB_KEYS: dict[str, Callable[[str], str]] = {
    "source": lambda job: layout.source_key(job, "holiday.MP4"),
    "source, unknown extension": lambda job: layout.source_key(job, "clip.exe"),
    "source, hostile name": lambda job: layout.source_key(job, "../../other-job/source.mp4"),
    "chunks": layout.chunks_prefix,
    "chunk output": lambda job: layout.chunk_output_key(job, "720p", 7),
    "audio": layout.audio_key,
    "manifest": layout.manifest_key,
    "rendition record": lambda job: layout.rendition_record_key(job, "720p"),
    "rendition live record": lambda job: layout.rendition_record_key(job, "720p", False),
    "chunk record": lambda job: layout.chunk_record_key(job, 7),
    "audio record": lambda job: layout.chunk_record_key(job, layout.AUDIO, False),
    "requeues": layout.requeues_key,
    "rendition": lambda job: layout.rendition_prefix(job, "720p"),
    "segments": lambda job: layout.segments_prefix(job, "720p"),
    "master": layout.master_key,
    "poster": layout.poster_key,
}


@pytest.mark.parametrize("builder", JOB_KEYS.values(), ids=list(JOB_KEYS))
def test_every_key_of_a_job_is_under_its_prefix(builder: Callable[[str], str]) -> None:
    key = builder(JOB)
    assert key.startswith(layout.job_prefix(JOB)), key
    assert ".." not in key.split("/") and "//" not in key, key
    other = uuid.uuid4().hex
    assert not builder(other).startswith(layout.job_prefix(JOB))


def test_a_sources_extension_is_kept_only_when_it_is_a_video_one() -> None:
    assert layout.source_key(JOB, "holiday.MP4") == f"{JOB}/source.mp4"
    assert layout.source_key(JOB, "clip.exe") == f"{JOB}/source.bin"
    assert layout.source_key(JOB, "no-extension") == f"{JOB}/source.bin"


HOSTILE_TASK_IDS = [
    "",
    "../../jobs/victim/manifest.json",
    "/absolute",
    "a/b/c",
    "x" * 10_000,
    "\x00\n\r\t",
    "\udc80 lone surrogate",
    "ünïcødé 🎞",
    "%2e%2e%2f",
    str(uuid.uuid4()),
]


@pytest.mark.parametrize("task_id", HOSTILE_TASK_IDS, ids=range(len(HOSTILE_TASK_IDS)))
def test_no_task_id_escapes_the_failure_record_key_shape(task_id: str) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}\.json", layout.failure_record_key(task_id))


def test_distinct_task_ids_get_distinct_failure_keys_and_one_id_always_the_same() -> None:
    keys = [layout.failure_record_key(t) for t in HOSTILE_TASK_IDS]
    assert len(set(keys)) == len(keys)
    assert keys == [layout.failure_record_key(t) for t in HOSTILE_TASK_IDS]


def test_audit_keys_sort_by_time() -> None:
    start = datetime(2026, 12, 31, 23, 59, 59, 999_990, tzinfo=UTC)
    steps = [0, 1, 9, 10, 11, 999_999, 1_000_000, 86_400_000_000, 40 * 86_400_000_000]
    times = [start + timedelta(microseconds=us) for us in steps]
    times += [t for t in times]  # two entries of one microsecond: both kept, still in order
    shuffled = random.Random(11).sample(times, len(times))
    keys = {layout.audit_key(t): t for t in shuffled}
    assert len(keys) == len(times)
    assert [keys[k] for k in sorted(keys)] == sorted(times)
    assert all(re.fullmatch(layout.AUDIT_KEY_PATTERN, k) for k in keys)
