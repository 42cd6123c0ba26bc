"""Upload to completed HLS end to end: real RabbitMQ, real S3 server, real ffmpeg, real workers."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import pytest
from support.commands import encodeq, upload_and_wait
from support.media import ffprobe, make_video
from support.storage import download_rendition, storage

from core.layout import RENDITIONS
from core.storage import parse_uri


@pytest.fixture(scope="module")
def fleet():
    """Two workers with one pool process each: competing consumers on one machine."""
    from support.fleet import WorkerFleet

    fleet = WorkerFleet()
    fleet.start("alpha")
    fleet.start("beta")
    yield fleet
    fleet.stop_all()


def object_text(uri: str) -> str:
    bucket, key = parse_uri(uri)
    s = storage()
    assert bucket == s.bucket(RENDITIONS)
    data = s.get_bytes(RENDITIONS, key)
    assert data is not None, f"{uri} does not exist"
    return data.decode()


def check_rendition_plays(rendition: dict, duration: float, audio: bool, into: Path) -> None:
    """The rendition as stored, decoded by ffprobe, has the planned size, codecs and length."""
    info = ffprobe(str(download_rendition(rendition["playlist"], into)))
    video = [s for s in info["streams"] if s["codec_type"] == "video"]
    audio_streams = [s for s in info["streams"] if s["codec_type"] == "audio"]
    assert (video[0]["width"], video[0]["height"]) == (rendition["width"], rendition["height"])
    assert video[0]["codec_name"] == "h264" and video[0]["pix_fmt"] == "yuv420p"
    assert bool(audio_streams) is audio
    if audio:
        assert audio_streams[0]["codec_name"] == "aac"
    assert float(info["format"]["duration"]) == pytest.approx(duration, abs=0.25)


def check_master(manifest: dict) -> str:
    master = object_text(manifest["master_playlist"])
    assert master.startswith("#EXTM3U")
    for r in manifest["renditions"]:
        assert f"{r['name']}/index.m3u8" in master
        assert f"RESOLUTION={r['width']}x{r['height']}" in master
    assert master.count("#EXT-X-STREAM-INF:") == len(manifest["renditions"])
    assert "BANDWIDTH=" in master and 'CODECS="avc1.' in master
    return master


def test_landscape_source_gets_every_rung_up_to_its_size(
    fleet, media_dir: Path, tmp_path: Path
) -> None:
    source = make_video(media_dir / "vidéo 日本 clip; $(rm -rf).mp4", 640, 360, duration=3)
    [manifest] = upload_and_wait(source)
    assert manifest["state"] == "completed", manifest["error"]
    assert manifest["error"] is None
    assert manifest["source"]["filename"] == source.name
    assert "rm -rf" not in manifest["source"]["uri"]  # the key is ours, not the user's name
    _, source_key = parse_uri(manifest["source"]["uri"])
    assert source_key == f"{manifest['job_id']}/source.mp4"
    stat = storage().client.stat_object(storage().bucket("uploads"), source_key)
    assert unquote(stat.metadata["x-amz-meta-original-filename"]) == source.name
    assert (manifest["source"]["width"], manifest["source"]["height"]) == (640, 360)
    assert manifest["source"]["duration"] == pytest.approx(3.0, abs=0.1)
    got = [(r["name"], r["width"], r["height"]) for r in manifest["renditions"]]
    assert got == [("360p", 640, 360), ("240p", 426, 240)]
    for r in manifest["renditions"]:
        assert r["state"] == "completed" and r["worker"]
        check_rendition_plays(r, duration=3.0, audio=True, into=tmp_path)
    master = check_master(manifest)
    assert "mp4a.40.2" in master  # avc1.* is checked for every master above
    # the poster is a real JPEG
    _, key = parse_uri(manifest["poster"])
    assert storage().get_bytes(RENDITIONS, key)[:2] == b"\xff\xd8"


def test_portrait_phone_video_by_rotation_metadata(fleet, media_dir: Path, tmp_path: Path) -> None:
    # Stored as 640x360 landscape pixels with a 90 degree display rotation: shown as 360x640.
    source = make_video(media_dir / "portrait.mp4", 640, 360, duration=2, rotate=90)
    [manifest] = upload_and_wait(source)
    assert manifest["state"] == "completed", manifest["error"]
    assert manifest["source"]["rotation"] in (90, 270)
    assert (manifest["source"]["width"], manifest["source"]["height"]) == (360, 640)
    got = [(r["name"], r["width"], r["height"]) for r in manifest["renditions"]]
    assert got == [("360p", 360, 640), ("240p", 240, 426)]
    for r in manifest["renditions"]:
        check_rendition_plays(r, duration=2.0, audio=True, into=tmp_path)
    check_master(manifest)


def test_source_without_audio(fleet, media_dir: Path, tmp_path: Path) -> None:
    source = make_video(media_dir / "silent.mp4", 426, 240, duration=2, audio=False)
    [manifest] = upload_and_wait(source)
    assert manifest["state"] == "completed", manifest["error"]
    assert manifest["source"]["has_audio"] is False
    [r] = manifest["renditions"]
    assert (r["name"], r["width"], r["height"]) == ("240p", 426, 240)
    check_rendition_plays(r, duration=2.0, audio=False, into=tmp_path)
    master = check_master(manifest)
    assert "mp4a" not in master


def test_tiny_source_gets_one_rendition_at_its_own_size(
    fleet, media_dir: Path, tmp_path: Path
) -> None:
    source = make_video(media_dir / "tiny.mp4", 160, 90, duration=2)
    [manifest] = upload_and_wait(source)
    assert manifest["state"] == "completed", manifest["error"]
    [r] = manifest["renditions"]
    assert (r["name"], r["width"], r["height"]) == ("90p", 160, 90)
    check_rendition_plays(r, duration=2.0, audio=True, into=tmp_path)
    check_master(manifest)


def test_keyframes_are_aligned_across_rungs(fleet, media_dir: Path, tmp_path: Path) -> None:
    source = make_video(media_dir / "gop.mp4", 640, 360, duration=6)
    [manifest] = upload_and_wait(source)
    assert manifest["state"] == "completed", manifest["error"]
    segment_lists = []
    for r in manifest["renditions"]:
        playlist = object_text(r["playlist"])
        segment_lists.append(
            [line.split(",")[0] for line in playlist.splitlines() if line.startswith("#EXTINF")]
        )
    # Every rung cut its segments at the same instants.
    assert len(segment_lists) == 2 and segment_lists[0] == segment_lists[1]
    assert len(segment_lists[0]) == 3  # 6 s in 2 s segments


def test_two_workers_both_take_work(fleet, media_dir: Path, tmp_path: Path) -> None:
    sources = [make_video(media_dir / f"par{i}.mp4", 640, 360, duration=4) for i in range(3)]
    manifests = upload_and_wait(*sources)
    assert [m["state"] for m in manifests] == ["completed"] * 3
    workers = {r["worker"].split("@")[0] for m in manifests for r in m["renditions"]}
    assert workers == {"alpha", "beta"}


def test_status_and_jobs_commands_show_the_manifest(fleet, media_dir: Path, tmp_path: Path) -> None:
    source = make_video(media_dir / "status.mp4", 320, 180, duration=1)
    [manifest] = upload_and_wait(source)
    status = encodeq("status", manifest["job_id"], "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["state"] == "completed"
    listing = json.loads(encodeq("jobs", "--json").stdout)
    assert manifest["job_id"] in [m["job_id"] for m in listing]
    missing = encodeq("status", "0" * 32)
    assert missing.returncode == 1 and "no job" in missing.stderr


@pytest.mark.unit
def test_upload_of_a_missing_file_is_a_clean_error(tmp_path: Path) -> None:
    result = encodeq("upload", str(tmp_path / "nope.mp4"))
    assert result.returncode == 2
    assert "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_buckets_are_private_and_playback_urls_are_presigned(fleet, media_dir: Path) -> None:
    import urllib.error
    import urllib.request

    source = make_video(media_dir / "private.mp4", 320, 180, duration=1)
    [manifest] = upload_and_wait(source)
    _, key = parse_uri(manifest["master_playlist"])
    s = storage()
    anonymous = f"{s.settings.s3_endpoint}/{s.bucket(RENDITIONS)}/{key}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(anonymous, timeout=10)
    assert refused.value.code == 403
    url = s.presigned_url(RENDITIONS, key)
    assert "X-Amz-Expires=3600" in url and "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read().startswith(b"#EXTM3U")


@pytest.mark.unit
def test_presigned_urls_use_the_public_endpoint_when_set() -> None:
    from config.settings import Settings
    from core.storage import Storage

    settings = Settings(s3_public_endpoint="http://localhost:19000")
    url = Storage(settings).presigned_url(RENDITIONS, "job/master.m3u8")
    assert url.startswith(f"http://localhost:19000/{settings.bucket(RENDITIONS)}/job/master.m3u8?")
