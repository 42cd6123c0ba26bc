"""The embedded S3 server with a data directory keeps its objects across a restart (``encodeq up``).

Real servers over HTTP with the minio SDK, nothing mocked: write a seeded sweep of objects (random
sizes, a multipart one, the project's content types, user metadata, deletes one by one and in a
batch, overwrites, keys that are no file name), stop, start a new server on the directory, and
every object must be back byte for byte with its content type and metadata, and no deleted one.
A crash (no final sync) keeps everything flushed before it. Each restarted server has a moto
account of its own, so what it serves came from the directory, not from the process's memory.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from minio import Minio
from minio.deleteobjects import DeleteObject

from console.s3server import EmbeddedS3, written

MiB = 1024 * 1024
TYPES = ["application/vnd.apple.mpegurl", "video/mp2t", "application/json"]


@dataclass
class Stored:
    data: bytes
    content_type: str
    meta: dict[str, str]
    #: Standard headers stored with the object (``Content-Encoding``, ``Cache-Control``).
    headers: dict[str, str] = field(default_factory=dict)


def _client(endpoint: str) -> Minio:
    return Minio(endpoint.removeprefix("http://"), "anyone", "anything", secure=False)


def _seed() -> random.Random:
    seed = int(os.environ.get("ENCODEQ_TEST_SEED") or random.randrange(2**32))
    print(f"seed={seed} (ENCODEQ_TEST_SEED={seed} repeats this run)")
    return random.Random(seed)


def _put(
    client: Minio, bucket: str, key: str, data: bytes, ctype: str, meta: dict, **headers: str
) -> Stored:
    sent = {**meta, **{name.replace("_", "-"): value for name, value in headers.items()}}
    client.put_object(
        bucket, key, io.BytesIO(data), len(data), content_type=ctype, metadata=sent or None
    )
    user = {f"x-amz-meta-{k}".lower(): v for k, v in meta.items()}
    return Stored(data, ctype, user, {k.replace("_", "-"): v for k, v in headers.items()})


def _read(client: Minio, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return response.read(decode_content=False)
    finally:
        response.close()
        response.release_conn()


def _assert_holds(client: Minio, expected: dict[str, dict[str, Stored]]) -> None:
    """Exactly these buckets, exactly these keys, each byte for byte with its type and metadata."""
    assert sorted(b.name for b in client.list_buckets()) == sorted(expected)
    for bucket, objects in expected.items():
        assert sorted(o.object_name for o in client.list_objects(bucket, recursive=True)) == sorted(
            objects
        )
        for key, stored in objects.items():
            stat = client.stat_object(bucket, key)
            meta = {
                k.lower(): v
                for k, v in stat.metadata.items()
                if k.lower().startswith("x-amz-meta-")
            }
            assert (stat.content_type, meta) == (stored.content_type, stored.meta), key
            for name, value in stored.headers.items():
                assert stat.metadata.get(name) == value, (key, name)
            assert _read(client, bucket, key) == stored.data, key


def _sweep(client: Minio, rng: random.Random, tmp: Path) -> dict[str, dict[str, Stored]]:
    """Write the seeded sweep into two buckets (and a third one removed); what must remain."""
    run = uuid.uuid4().hex[:8]
    names = [f"p{run}-{n}" for n in ("jobs", "renditions", "gone")]
    for name in names:
        client.make_bucket(name)
    jobs, renditions, gone = names
    expected: dict[str, dict[str, Stored]] = {jobs: {}, renditions: {}}
    for i in range(16):
        bucket = rng.choice([jobs, renditions])
        key = f"job{rng.randrange(3)}/{rng.choice(['360p', '720p'])}/seg_{i:03d}.ts"
        meta = {"original-filename": f"clip{i}.mov"} if rng.random() < 0.5 else {}
        data = rng.randbytes(rng.choice([0, 1, rng.randrange(2, 300_000)]))
        expected[bucket][key] = _put(client, bucket, key, data, rng.choice(TYPES), meta)
    # Keys that are no file name beside each other: a file "clash" and a directory "clash/".
    for key in ("clash", "clash/inner.json", "folder/", "é x+y/ünï.json", "a//b"):
        data = rng.randbytes(rng.randrange(0, 5000))
        expected[jobs][key] = _put(client, jobs, key, data, "application/json", {"k": "v"})
    packed = gzip.compress(json.dumps({"seed": rng.random()}).encode())
    expected[jobs]["packed.json"] = _put(
        client, jobs, "packed.json", packed, "application/json", {},
        content_encoding="gzip", cache_control="max-age=60",
    )  # fmt: skip
    big = tmp / "big.bin"
    big.write_bytes(rng.randbytes(12 * MiB))
    written = client.fput_object(
        renditions, "job0/source.mp4", str(big), "video/mp2t", {"original-filename": "src.mp4"},
        part_size=5 * MiB,
    )  # fmt: skip
    assert "-" in (written.etag or ""), "not a multipart upload"
    expected[renditions]["job0/source.mp4"] = Stored(
        big.read_bytes(), "video/mp2t", {"x-amz-meta-original-filename": "src.mp4"}
    )
    # Deleted one by one, deleted in a batch, overwritten with other bytes, type and metadata.
    _put(client, jobs, "deleted.json", b"{}", "application/json", {})
    client.remove_object(jobs, "deleted.json")
    batch = [f"batch/{n}.ts" for n in range(5)]
    for key in batch:
        expected[renditions][key] = _put(client, renditions, key, b"x" * 10, "video/mp2t", {})
    errors = list(client.remove_objects(renditions, [DeleteObject(k) for k in batch[:3]]))
    assert errors == []
    for key in batch[:3]:
        del expected[renditions][key]
    _put(client, jobs, "manifest.json", b'{"v": 1}', "application/json", {"rev": "1"})
    expected[jobs]["manifest.json"] = _put(
        client, jobs, "manifest.json", b'{"v": 2, "done": true}', TYPES[0], {"rev": "2"}
    )
    _put(client, gone, "x.ts", b"x", "video/mp2t", {})
    client.remove_object(gone, "x.ts")
    client.remove_bucket(gone)
    return expected


def _inodes(data_dir: Path) -> dict[Path, int]:
    """Every object file (a rewrite is a new inode: files are renamed into place)."""
    return {
        path: path.stat().st_ino
        for path in data_dir.rglob("*")
        if path.is_file() and "index" not in path.parts
    }


def test_a_restart_keeps_every_object_and_no_deleted_one(tmp_path: Path) -> None:
    rng = _seed()
    data_dir = tmp_path / "data"
    first = EmbeddedS3(data_dir=data_dir)
    client = _client(first.start())
    expected = _sweep(client, rng, tmp_path)
    etags = {(b, k): client.stat_object(b, k).etag for b, objs in expected.items() for k in objs}
    first.stop()
    assert list((data_dir / ".mirror" / "tmp").iterdir()) == []

    started = time.monotonic()
    second = EmbeddedS3(data_dir=data_dir)
    assert second.port != first.port
    client = _client(second.start())
    print(
        f"restored {sum(map(len, expected.values()))} objects in {time.monotonic() - started:.2f} s"
    )
    try:
        _assert_holds(client, expected)
        # Restoring noted what it uploaded: comparing everything copies nothing again.
        files = _inodes(data_dir)
        second.flush()
        assert second.mirror is not None
        second.mirror.sync_all()
        assert _inodes(data_dir) == files
        # Single-part ETags are the bytes' MD5: unchanged by a restart (multipart ones re-part).
        for (bucket, key), etag in etags.items():
            if "-" not in etag:
                assert client.stat_object(bucket, key).etag == etag, key
        renditions = sorted(expected)[1]
        url = client.presigned_get_object(renditions, "job0/source.mp4")
        with urllib.request.urlopen(url) as response:
            assert response.read() == expected[renditions]["job0/source.mp4"].data
            assert response.headers["Content-Type"] == "video/mp2t"
        # What the restored server is then asked keeps being mirrored, through another restart.
        jobs = sorted(expected)[0]
        client.remove_object(jobs, "clash")
        del expected[jobs]["clash"]
        expected[jobs]["clash/inner.json"] = _put(
            client, jobs, "clash/inner.json", b"[]", "application/json", {}
        )
    finally:
        second.stop()
    with EmbeddedS3(data_dir=data_dir) as endpoint:
        _assert_holds(_client(endpoint), expected)


def test_a_crash_keeps_what_was_flushed(tmp_path: Path) -> None:
    rng = _seed()
    data_dir = tmp_path / "data"
    server = EmbeddedS3(data_dir=data_dir)
    client = _client(server.start())
    client.make_bucket("crash-flushed")
    flushed = {
        f"seg_{i}.ts": _put(client, "crash-flushed", f"seg_{i}.ts", rng.randbytes(n), TYPES[1], {})
        for i, n in enumerate(rng.randrange(1, 200_000) for _ in range(10))
    }
    client.remove_object("crash-flushed", "seg_0.ts")
    del flushed["seg_0.ts"]
    server.flush()
    late = {f"late_{i}.ts": rng.randbytes(rng.randrange(1, 2 * MiB)) for i in range(5)}
    for key, data in late.items():
        _put(client, "crash-flushed", key, data, TYPES[1], {})
    server.stop(sync=False)  # a crash: no final sync
    # What else a crash can leave: half a download (never under a real name), and an object's
    # file deleted before the index caught up (the object was deleted: it stays deleted).
    (data_dir / ".mirror" / "tmp" / "tmpHALF").write_bytes(b"half")
    (data_dir / "crash-flushed" / "seg_1.ts").unlink()
    del flushed["seg_1.ts"]

    with EmbeddedS3(data_dir=data_dir) as endpoint:
        client = _client(endpoint)
        keys = {o.object_name for o in client.list_objects("crash-flushed", recursive=True)}
        assert set(flushed) <= keys
        for key, stored in flushed.items():
            assert _read(client, "crash-flushed", key) == stored.data
        # The unflushed ones may or may not have made it; never as half an object.
        for key in keys - set(flushed):
            assert _read(client, "crash-flushed", key) == late[key]
    assert list((data_dir / ".mirror" / "tmp").iterdir()) == []


def test_the_mirror_writes_behind_on_its_own(tmp_path: Path) -> None:
    """No flush: the mirror's thread alone brings a write to disk, soon."""
    with EmbeddedS3(data_dir=tmp_path) as endpoint:
        client = _client(endpoint)
        client.make_bucket("behind")
        _put(client, "behind", "a/b.json", b"{}", "application/json", {})
        path = tmp_path / "behind" / "a" / "b.json"
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.read_bytes() == b"{}"


def test_an_empty_or_missing_data_dir_starts_empty(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "yet"
    for data_dir in (tmp_path, missing):
        with EmbeddedS3(data_dir=data_dir) as endpoint:
            assert _client(endpoint).list_buckets() == []
        assert data_dir.is_dir()


def test_files_put_in_a_bucket_directory_by_hand_are_adopted(tmp_path: Path) -> None:
    (tmp_path / "by-hand" / "job").mkdir(parents=True)
    (tmp_path / "by-hand" / "job" / "index.m3u8").write_bytes(b"#EXTM3U\n")
    (tmp_path / "Not_A_Bucket").mkdir()
    with EmbeddedS3(data_dir=tmp_path) as endpoint:
        client = _client(endpoint)
        assert [b.name for b in client.list_buckets()] == ["by-hand"]
        assert client.stat_object("by-hand", "job/index.m3u8").content_type == TYPES[0]
        assert _read(client, "by-hand", "job/index.m3u8") == b"#EXTM3U\n"
    assert (tmp_path / "Not_A_Bucket").is_dir()


def test_without_a_data_dir_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with EmbeddedS3() as endpoint:
        client = _client(endpoint)
        name = f"p{uuid.uuid4().hex[:8]}-memory"
        client.make_bucket(name)
        _put(client, name, "k.json", b"{}", "application/json", {})
        assert _read(client, name, "k.json") == b"{}"
        client.remove_object(name, "k.json")
        client.remove_bucket(name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
@pytest.mark.parametrize(
    ("method", "path", "query", "host", "touched"),
    [
        ("PUT", "/b/k/x.ts", "", "127.0.0.1:9000", ("b", "k/x.ts")),
        (
            "PUT",
            "/b/\u00c3\u00a9/x.ts",
            "",
            "127.0.0.1:9000",
            ("b", "\u00e9/x.ts"),
        ),  # UTF-8 as latin-1
        ("PUT", "/b", "", "localhost:9000", ("b", None)),  # a bucket made
        ("DELETE", "/b", "", "[::1]:9000", ("b", None)),  # a bucket removed
        ("POST", "/b", "delete=", "127.0.0.1", ("b", None)),  # a batch delete: keys in the body
        ("POST", "/b/k", "uploads=", "127.0.0.1", None),  # a multipart upload begun
        ("PUT", "/b/k", "partNumber=1&uploadId=u", "127.0.0.1", None),  # one of its parts
        ("DELETE", "/b/k", "uploadId=u", "127.0.0.1", None),  # aborted
        ("POST", "/b/k", "uploadId=u", "127.0.0.1", ("b", "k")),  # completed: the object
        ("PUT", "/k", "", "b.localhost:9000", (None, None)),  # virtual-host style: anything
        ("POST", "/moto-api/reset", "", "127.0.0.1", (None, None)),
    ],
)
def test_the_server_notes_what_a_write_touched(
    method: str, path: str, query: str, host: str, touched: tuple | None
) -> None:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query}
    assert written({**environ, "HTTP_HOST": host}) == touched
