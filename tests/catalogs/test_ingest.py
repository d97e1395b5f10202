"""Catalog ingestion over real clips and real bad files, on local disk and on the S3 endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalogs.delta import DeltaTables
from catalogs.errors import ErrorClass
from catalogs.ingest import CatalogIngest, open_rejects
from catalogs.schemas import REJECTS_TABLE, REQUESTS_TABLE, VIDEOS_TABLE
from catalogs.storage import Storage
from tests.catalogs.media import make_bad_files, stage


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> str:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture
def clips(shared_data: Path) -> dict[str, Path]:
    files = {p.name: p for p in sorted((shared_data / "videos").glob("*.mp4"))}
    files.update({p.name: p for p in sorted((shared_data / "edge").glob("*.mp4"))})
    return files


def test_ingest_real_clips_then_reingest_changes_nothing(settings, clips, tmp_path):
    uris = stage(settings, clips)
    listing = write_csv(tmp_path / "videos.csv", ["video_id", "uri", "speaker_id", "title"],
                        [[Path(n).stem, u, f"spk-{Path(n).stem.split('_')[0]}", n] for n, u in uris.items()])
    storage = Storage(settings)
    report = CatalogIngest(storage).run(listing)
    assert report.rejects == []
    assert report.added[VIDEOS_TABLE] == len(clips)
    tables = DeltaTables(storage)
    rows = {r["video_id"]: r for r in tables.read(VIDEOS_TABLE).to_pylist()}
    assert set(rows) == {Path(n).stem for n in clips}

    anime = rows["anime_no_audio_11s"]
    assert anime["has_audio"] is False and anime["audio_codec"] is None
    assert rows["no_audio_stream_10s"]["has_audio"] is False
    assert rows["address_man_10s"]["has_audio"] is True
    vlog = rows["vlog_woman_vertical_10s"]
    assert (vlog["width"], vlog["height"], vlog["video_codec"]) == (1080, 1920, "hevc")
    assert rows["address_woman_mpeg4_8s"]["video_codec"] == "mpeg4"
    assert rows["address_man_long_60s"]["duration_s"] == pytest.approx(60.0, abs=0.1)
    assert 21 < rows["interview_man_vfr_6s"]["fps"] < 23  # variable frame rate: the average
    assert all(len(r["sha256"]) == 64 for r in rows.values())

    version = tables.open(VIDEOS_TABLE).version()
    again = CatalogIngest(storage).run(listing)
    assert again.versions[VIDEOS_TABLE] is None and again.unchanged[VIDEOS_TABLE] == len(clips)
    assert tables.open(VIDEOS_TABLE).version() == version


def test_every_bad_row_is_reported_and_good_rows_land(settings, shared_data, tmp_path):
    bad = make_bad_files(shared_data, tmp_path / "bad")
    good = {"good.mp4": shared_data / "videos" / "speaker_map_5s.mp4",
            "good2.mp4": shared_data / "videos" / "speaker_glasses_5s.mp4",
            "fr.wav": shared_data / "audio" / "french1.wav", "de.wav": shared_data / "audio" / "german1.wav"}
    uris = stage(settings, {**bad, **good})
    outside = "s3://some-other-bucket/x.mp4" if settings.root.startswith("s3://") else "/etc/hostname"
    videos = write_csv(tmp_path / "videos.csv", ["video_id", "uri", "speaker_id"], [
        ["good", uris["good.mp4"], "s1"],
        ["missing", uris["zero_bytes.mp4"].replace("zero_bytes", "nope"), "s1"],
        ["zero", uris["zero_bytes.mp4"], "s1"],
        ["truncated", uris["truncated.mp4"], "s1"],
        ["text", uris["text_renamed.mp4"], "s1"],
        ["audio_only", uris["audio_only.mp4"], "s1"],
        ["still", uris["still.png"], "s1"],
        ["good", uris["good2.mp4"], "s2"],                      # duplicate id
        ["escape", "../../../../../../etc/passwd", "s1"],         # traversal
        ["outside", outside, "s1"],
        ["scheme", "http://127.0.0.1/x.mp4", "s1"],
        ["fileuri", "file:///etc/hostname", "s1"],
        ["nospeaker", uris["good2.mp4"], ""],
        ["rotated", uris["rotated.mp4"], "s3"],
    ])
    requests = write_csv(tmp_path / "requests.csv", ["video_id", "language", "audio_uri", "script"], [
        ["good", "fr", uris["fr.wav"], "bonjour"],
        ["good", "de", uris["bad_audio.wav"], ""],
        ["good", "es", uris["zero_audio.wav"], ""],
        ["ghost", "fr", uris["fr.wav"], ""],                      # unknown video
        ["good", "fr", uris["de.wav"], ""],                       # duplicate (video, language)
        ["good", "not a tag!", uris["fr.wav"], ""],
        ["rotated", "de", uris["de.wav"], ""],
        ["rotated", "it", "../../../../etc/shadow", ""],
    ])
    storage = Storage(settings)
    report = CatalogIngest(storage).run(videos, requests)
    got = {(r.listing, r.item): r.error_class for r in report.rejects}
    assert got == {
        ("videos", "missing"): ErrorClass.MISSING_FILE,
        ("videos", "zero"): ErrorClass.EMPTY_FILE,
        ("videos", "truncated"): ErrorClass.DECODE_ERROR,
        ("videos", "text"): ErrorClass.DECODE_ERROR,
        ("videos", "audio_only"): ErrorClass.NO_VIDEO_STREAM,
        ("videos", "still"): ErrorClass.UNSUPPORTED_INPUT,
        ("videos", "good"): ErrorClass.DUPLICATE_ID,
        ("videos", "escape"): ErrorClass.URI_NOT_ALLOWED,
        ("videos", "outside"): ErrorClass.URI_NOT_ALLOWED,
        ("videos", "scheme"): ErrorClass.URI_NOT_ALLOWED,
        ("videos", "fileuri"): ErrorClass.URI_NOT_ALLOWED,
        ("videos", "nospeaker"): ErrorClass.INVALID_ROW,
        ("requests", "good/de"): ErrorClass.AUDIO_DECODE_ERROR,
        ("requests", "good/es"): ErrorClass.EMPTY_FILE,
        ("requests", "ghost/fr"): ErrorClass.UNKNOWN_VIDEO,
        ("requests", "good/fr"): ErrorClass.DUPLICATE_ID,
        ("requests", "good/not a tag!"): ErrorClass.INVALID_ROW,
        ("requests", "rotated/it"): ErrorClass.URI_NOT_ALLOWED,
    }
    # every reason names the problem; the rows as given are kept
    assert all(r.reason for r in report.rejects)
    tables = DeltaTables(storage)
    videos_rows = {r["video_id"]: r for r in tables.read(VIDEOS_TABLE).to_pylist()}
    assert set(videos_rows) == {"good", "rotated"}
    assert videos_rows["good"]["uri"] == uris["good.mp4"]  # the first row with the id wins
    rot = videos_rows["rotated"]
    assert (rot["rotation"], rot["width"], rot["height"]) == (90, 1080, 1920)
    reqs = {(r["video_id"], r["language"]): r for r in tables.read(REQUESTS_TABLE).to_pylist()}
    assert set(reqs) == {("good", "fr"), ("rotated", "de")}
    assert reqs[("good", "fr")]["script"] == "bonjour"
    assert reqs[("good", "fr")]["audio_sample_rate"] == 16000
    assert reqs[("good", "fr")]["audio_duration_s"] == pytest.approx(6.86, abs=0.05)

    # rejects are recorded once; re-ingesting the same listings adds no version anywhere
    recorded = tables.read(REJECTS_TABLE).to_pylist()
    assert len(recorded) == len(report.rejects)
    before = {n: tables.open(n).version() for n in (VIDEOS_TABLE, REQUESTS_TABLE, REJECTS_TABLE)}
    CatalogIngest(storage).run(videos, requests)
    assert {n: tables.open(n).version() for n in before} == before
    assert len(open_rejects(tables)) == len(report.rejects)


def test_listing_formats_and_fix_of_a_bad_row(local_settings, shared_data, tmp_path):
    clip = shared_data / "videos" / "speaker_glasses_5s.mp4"
    rows = [{"video_id": "a", "uri": str(clip), "speaker_id": "s"},
            {"video_id": "b", "uri": str(tmp_path / "later.mp4"), "speaker_id": "s"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "v.parquet")
    storage = Storage(local_settings)
    report = CatalogIngest(storage).run(str(tmp_path / "v.parquet"))
    assert [(r.item, r.error_class) for r in report.rejects] == [("b", ErrorClass.MISSING_FILE)]
    tables = DeltaTables(storage)
    assert [r["item"] for r in open_rejects(tables)] == ["b"]

    # the file arrives; a JSONL listing (with one unparseable line) fixes the row
    (tmp_path / "later.mp4").write_bytes(clip.read_bytes())
    jsonl = tmp_path / "v.jsonl"
    jsonl.write_text("\n".join([json.dumps(r) for r in rows] + ["{not json"]) + "\n")
    report = CatalogIngest(storage).run(str(jsonl))
    assert [(r.row_number, r.error_class) for r in report.rejects] == [(3, ErrorClass.INVALID_ROW)]
    assert report.added[VIDEOS_TABLE] == 1 and report.unchanged[VIDEOS_TABLE] == 1
    assert [r["item"] for r in open_rejects(tables)] == [None]  # only the unparseable line is left


def test_changed_file_is_reprobed_and_updated(local_settings, shared_data, tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes((shared_data / "videos" / "speaker_glasses_5s.mp4").read_bytes())
    listing = write_csv(tmp_path / "v.csv", ["video_id", "uri", "speaker_id"], [["a", str(path), "s"]])
    storage = Storage(local_settings)
    CatalogIngest(storage).run(listing)
    first = DeltaTables(storage).read(VIDEOS_TABLE).to_pylist()[0]
    path.write_bytes((shared_data / "videos" / "speaker_map_5s.mp4").read_bytes())
    report = CatalogIngest(storage).run(listing)
    assert report.updated[VIDEOS_TABLE] == 1
    second = DeltaTables(storage).read(VIDEOS_TABLE).to_pylist()[0]
    assert second["sha256"] != first["sha256"] and second["width"] == 844
    # the old version is still there to read
    assert DeltaTables(storage).read(VIDEOS_TABLE, version=1).to_pylist()[0]["sha256"] == first["sha256"]


def test_relative_uris_in_an_s3_listing_resolve_against_its_folder(s3_settings, shared_data, tmp_path, monkeypatch):
    """A listing on S3 names its media relative to its own folder, as a local listing does; a file of
    the same name in the working directory (an allowed root here) must not be picked up instead."""
    from catalogs.listing import labelled_videos

    storage = Storage(s3_settings)
    media = s3_settings.allowed_roots[0]                      # s3://bucket/media
    storage.put_file(shared_data / "videos" / "speaker_map_5s.mp4", f"{media}/clips/map.mp4")
    storage.put_file(shared_data / "audio" / "french1.wav", f"{media}/audio/fr.wav")
    (tmp_path / "map.mp4").write_bytes((shared_data / "videos" / "speaker_glasses_5s.mp4").read_bytes())
    monkeypatch.chdir(tmp_path)
    storage.write_bytes(f"{media}/clips/videos.csv", b"video_id,uri,speaker_id\nmap,map.mp4,man\n"
                                                     b"escape,../../../elsewhere/x.mp4,man\n")
    storage.write_bytes(f"{media}/clips/requests.csv", b"video_id,language,audio_uri\nmap,fr,../audio/fr.wav\n")
    report = CatalogIngest(storage).run(f"{media}/clips/videos.csv", f"{media}/clips/requests.csv")
    tables = DeltaTables(storage)
    assert tables.read(VIDEOS_TABLE, columns=["uri"]).to_pylist() == [{"uri": f"{media}/clips/map.mp4"}]
    assert tables.read(REQUESTS_TABLE, columns=["audio_uri"]).to_pylist() == [{"audio_uri": f"{media}/audio/fr.wav"}]
    assert [(r.item, r.error_class) for r in report.rejects] == [("escape", ErrorClass.URI_NOT_ALLOWED)]
    # training listings read the same way
    storage.write_bytes(f"{media}/clips/train.csv", b"uri,speaker_id\nmap.mp4,man\n")
    assert labelled_videos(storage, f"{media}/clips/train.csv") == ([f"{media}/clips/map.mp4"], ["man"])
