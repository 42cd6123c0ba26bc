"""``encodeq demo`` as a new user runs it: no S3 server anywhere, only RabbitMQ and ffmpeg.

The demo runs as a subprocess in this test run's vhost, but with ``ENCODEQ_S3_ENDPOINT`` pointing
at a closed loopback port, so it has to start its own embedded S3 server, its own workers, and stop
them all again.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from support.commands import ENCODEQ
from support.dlq import dlq_for

from config.settings import Settings
from console.s3server import answers, free_port
from core.layout import RENDITIONS

#: The demo itself takes ~15-30 s here; this only bounds a hang.
DEMO_TIMEOUT_S = 120


def process_groups() -> dict[int, int]:
    """pid -> process group of every process on the machine."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True, check=True)
    return {int(pid): int(pgid) for pid, pgid in (line.split() for line in out.stdout.splitlines())}


@pytest.mark.slow
def test_demo_runs_on_a_machine_without_s3_and_cleans_up(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    assert not answers(closed)
    env = {**os.environ, "ENCODEQ_S3_ENDPOINT": closed, "COLUMNS": "200"}
    env.pop("FORCE_COLOR", None)  # plain text, so the output can be matched
    demo = subprocess.Popen(
        [*ENCODEQ, "demo"],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = demo.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        demo.terminate()  # SIGTERM: the demo still stops its workers and its S3 server
        out, err = demo.communicate(timeout=60)
        pytest.fail(f"the demo took over {DEMO_TIMEOUT_S}s:\n{out[-5000:]}\n{err[-3000:]}")
    assert demo.returncode == 0, f"{out[-5000:]}\n{err[-3000:]}"

    assert f"nothing answers at {closed}: started an embedded S3 server" in out
    bucket = re.escape(Settings().bucket(RENDITIONS))
    assert re.search(rf"master playlist: s3://{bucket}/[0-9a-f]{{32}}/master\.m3u8", out), out
    assert re.search(r"presigned URL \(1 h\): http://127\.0\.0\.1:\d+/", out), out

    # The same sample in chunked mode: 4 s chunks, each decoded by range, joined, seam-checked.
    assert re.search(
        r"chunked: 3 chunks of 4s, each decoded by range, audio once, seam check passed on 3/3 "
        r"joined renditions, 240p from the whole source",
        out,
    ), out
    assert "demo OK" in out and "completed in both modes" in out

    # The broken file's probe was rejected and dead-lettered, and the record says why.
    dlq_line = re.search(r"^ *broken\.mp4 +task encodeq\.probe .*$", out, re.MULTILINE)
    assert dlq_line, out
    assert re.search(r"reason rejected in encodeq\.control +-> +not_a_video: ", dlq_line[0])
    # Peeking left it where it was.
    broken_job = re.search(r"broken\.mp4 -> job ([0-9a-f]{32})", out)
    assert broken_job, out
    assert len(dlq_for(job_id=broken_job[1])) == 1

    # Both workers took part in the encoding, and none of them (nor its pool or an ffmpeg: its
    # process group) outlived the demo.
    assert re.search(r"renditions per worker: demo-1@\S+: \d, demo-2@\S+: \d", out), out
    pids = [int(pid) for pid in re.findall(r"started worker demo-\d@\S+ \(pid (\d+)\)", out)]
    assert len(pids) == 2, out
    survivors = {pid: pgid for pid, pgid in process_groups().items() if pgid in pids}
    assert not survivors, f"processes of the demo's workers still running: {survivors}"

    assert not (tmp_path / "encodeq-demo").exists(), "without --keep nothing is left in the cwd"
