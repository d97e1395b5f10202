"""``resync sync``: the sync expert's verdict on any video, for a person."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_sync_prints_the_experts_offset_confidence_and_distance(tmp_path, shared_data):
    video = str(shared_data / "videos" / "speaker_map_5s.mp4")
    root = ["--root", str(tmp_path / "root")]
    r = runner.invoke(app, ["sync", video, "--json", *root])
    assert r.exit_code == 0, r.output
    own = json.loads(r.stdout)
    assert set(own) == {"offset_frames", "confidence", "distance"}
    assert abs(own["offset_frames"]) <= 2 and own["confidence"] > 0
    r = runner.invoke(app, ["sync", video, str(shared_data / "audio" / "german1.wav"), "--json", *root])
    other = json.loads(r.stdout)
    assert other["confidence"] < own["confidence"] and other["distance"] > own["distance"], (own, other)
    r = runner.invoke(app, ["sync", video, *root])
    assert r.exit_code == 0 and "offset_frames" in r.output and "expert" in r.output
    r = runner.invoke(app, ["sync", str(tmp_path / "missing.mp4"), *root])
    assert r.exit_code == 1 and "missing.mp4" in r.output
    assert runner.invoke(app, ["sync", "--help"]).exit_code == 0
