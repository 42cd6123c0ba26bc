"""Lifecycle events are pub-sub: every subscriber sees every event (JSON), progress rate-limited."""

from __future__ import annotations

import itertools
from datetime import datetime

from support.commands import encodeq
from support.events import Events
from support.media import make_video


def test_every_subscriber_sees_the_whole_lifecycle(workers, media_dir) -> None:
    workers.start("events")
    source = make_video(media_dir / "events.mp4", 640, 360, duration=8)
    with Events() as first, Events() as second:
        result = encodeq("upload", str(source), "--mode", "per-rung", "--wait", timeout=180)
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.split()[0]
        streams = []
        for events in (first, second):
            streams.append([e for e in events.collect() if e.get("job_id") == job_id])
    # Two private queues, not competing consumers: both got the same events.
    assert [e["event"] for e in streams[0]] == [e["event"] for e in streams[1]]
    kinds = [e["event"] for e in streams[0]]
    assert kinds[:3] == ["job.queued", "job.probing", "job.encoding"]
    assert kinds[-1] == "job.completed"
    for rung in ("360p", "240p"):
        mine = [e for e in streams[0] if e.get("rendition") == rung]
        assert mine[0]["event"] == "rendition.started"
        assert mine[-1]["event"] == "rendition.completed"
        assert mine[0]["worker"].startswith("events@")
        progress = [e for e in mine if e["event"] == "rendition.progress"]
        assert progress, "no progress events"
        values = [e["progress"] for e in progress]
        assert values == sorted(values) and all(0 <= v <= 100 for v in values)
        # at most one progress event per rendition per interval (0.5 s by default)
        times = [datetime.fromisoformat(e["time"]) for e in progress]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert all(gap >= 0.45 for gap in gaps), gaps
    encoding = next(e for e in streams[0] if e["event"] == "job.encoding")
    assert [r["name"] for r in encoding["renditions"]] == ["360p", "240p"]
