"""What bench_chunked.py measures and models: one chunked job's times, a source's results, and
N single-core hosts extrapolated from the one-host run."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

#: Host counts the model is evaluated for.
HOSTS = (1, 2, 4, 8, 16, 32)


@dataclass
class Chunked:
    """One chunked job: wall time, phases, and what each chunk took."""

    seconds: float
    chunks: int
    #: Each chunk task's wall time, and its ffmpeg's alone (the difference: per-chunk overhead).
    chunk_seconds: list[float]
    encode_seconds: list[float]
    audio_seconds: float
    rungs: int
    split: str
    phases: dict[str, float]
    local_cpu_seconds: float


@dataclass
class Result:
    name: str
    width: int
    height: int
    duration: float
    chunk_length: int
    times: dict[str, float] = field(default_factory=dict)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    local_cpu_seconds: float = 0.0
    chunks: int = 0
    split: str = ""
    model: dict[str, float] = field(default_factory=dict)
    #: Modelled seconds on N hosts: with this source's chunks, and with one chunk per host.
    hosts: dict[int, tuple[float, float]] = field(default_factory=dict)


@dataclass
class Model:
    """N single-core hosts, from the 1-host run: what does not split, plus the chunks.

    head   = upload + probe until the first chunk starts (serial)
    tail   = joins + finalize (one join per rung: they spread over up to ``rungs`` hosts)
    chunks = waves of the mean chunk task, the audio task filling a gap or adding its share
    With the chunk length chosen per host count (``sized``: one chunk per host), the chunk phase is
    the encode work divided by the hosts plus one per-chunk overhead.
    """

    head: float
    tail: float
    rungs: int
    chunks: int
    per_chunk: float
    overhead: float
    encode: float
    audio: float

    @classmethod
    def of(cls, t1: Chunked) -> Model:
        return cls(
            head=t1.phases["upload"] + t1.phases["probe + split"],
            tail=t1.phases["joins + finalize"],
            rungs=t1.rungs,
            chunks=t1.chunks,
            per_chunk=statistics.mean(t1.chunk_seconds),
            overhead=statistics.mean(
                a - b for a, b in zip(t1.chunk_seconds, t1.encode_seconds, strict=True)
            ),
            encode=sum(t1.encode_seconds),
            audio=t1.audio_seconds,
        )

    def _around(self, hosts: int) -> float:
        return self.head + self.tail / min(hosts, self.rungs)

    def seconds(self, hosts: int) -> float:
        """This source's chunks on ``hosts`` hosts."""
        waves = math.ceil(self.chunks / hosts) * self.per_chunk
        return self._around(hosts) + max(waves, (self.chunks * self.per_chunk + self.audio) / hosts)

    def sized(self, hosts: int) -> float:
        """One chunk per host (``ENCODEQ_CHUNK_SECONDS`` = duration / hosts)."""
        return self._around(hosts) + (self.encode + self.audio) / hosts + self.overhead
