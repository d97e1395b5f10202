"""The orchestrated system end to end: `resync run ...` in its own process, a real `prefect server`
on 127.0.0.1, the storage root and the media on a real S3 endpoint (moto server), an embedded Ray
cluster, real clips from ../shared/data. Tests run in file order and share one catalog: each
step builds on the state the previous one committed, as a week of a localization team would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from catalogs.delta import DeltaTables
from catalogs.manifest import DubManifest
from catalogs.registry import ModelRegistry
from catalogs.runs import RunLog
from catalogs.settings import Settings
from catalogs.storage import Storage
from tests.conftest import REPO, run_ffmpeg

# video id -> (clip in ../shared/data/videos, speaker, seconds of it the catalog gets, its video codec).
# The catalog's videos are the clips' openings, re-encoded in their own codec: the tests are about
# the orchestration, and every second of video is seconds of CPU in each of the runs below. woman2's
# is the longest: the speaker with enough footage for a model of her own (the personalization test).
CLIPS = {"map": ("speaker_map_5s.mp4", "man", 2.5, "libx264"),
         "glasses": ("speaker_glasses_5s.mp4", "woman", 2.5, "libx264"),
         "mpeg4": ("address_woman_mpeg4_8s.mp4", "woman2", 4.0, "mpeg4")}
ENCODER_ARGS = {"libx264": ["-preset", "veryfast"], "mpeg4": ["-q:v", "3"]}
LANGS = {"fr": "french1.wav", "de": "german1.wav"}


@dataclass
class World:
    settings: Settings
    storage: Storage
    env: dict[str, str]
    media: str                 # s3:// prefix of the catalog's media
    local: Path                # scratch folder
    shared: Path
    prefect_api: str

    @property
    def manifest(self) -> DubManifest:
        return DubManifest(DeltaTables(self.storage))

    def cli(self, *args: str, expect: int | None = 0, timeout: float = 480) -> dict | None:
        proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], env=self.env, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
        if expect is not None:
            assert proc.returncode == expect, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        start = proc.stdout.find("{")
        return json.loads(proc.stdout[start:]) if start >= 0 and "--json" in args else None

    def spawn(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=self.env, cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def clip(self, video_id: str) -> Path:
        """The catalog's copy of a clip (see CLIPS), cut and re-encoded once per module."""
        name, _, seconds, codec = CLIPS[video_id]
        out = self.local / "clips" / name
        if not out.exists():
            out.parent.mkdir(exist_ok=True)
            run_ffmpeg("-i", str(self.shared / "videos" / name), "-t", str(seconds), "-c:v", codec,
                       *ENCODER_ARGS[codec], "-pix_fmt", "yuv420p", "-c:a", "aac", str(out))
        return out

    def put(self, local: Path, name: str) -> str:
        uri = f"{self.media}/{name}"
        self.storage.put_file(local, uri)
        return uri

    def ingest(self, videos: list[tuple[str, str, str]], requests: list[tuple[str, str, str]]) -> None:
        vfile, rfile = self.local / f"videos-{time.monotonic_ns()}.csv", self.local / f"requests-{time.monotonic_ns()}.csv"
        vfile.write_text("video_id,uri,speaker_id\n" + "".join(f"{v},{u},{s}\n" for v, u, s in videos))
        rfile.write_text("video_id,language,audio_uri\n" + "".join(f"{v},{lang},{u}\n" for v, lang, u in requests))
        self.cli("catalog", "ingest", *(["--videos", str(vfile)] if videos else []), "--requests", str(rfile))


@pytest.fixture(scope="module")
def world(shared_data, s3_endpoint, tmp_path_factory, ffmpeg) -> World:
    import s3fs

    from infra.dev.prefect_server import start_prefect_server

    local = tmp_path_factory.mktemp("orchestration")
    bucket = f"resync-orch-{os.getpid()}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).mkdir(bucket)
    server = start_prefect_server(home=local / "prefect-server", log_path=local / "prefect-server.log")
    media = f"s3://{bucket}/media"
    settings = Settings(root=f"s3://{bucket}/root", allowed_roots=[media], s3_endpoint_url=s3_endpoint)
    env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(local / "prefect-client"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "RESYNC_ROOT": settings.root,
           "RESYNC_S3_ENDPOINT_URL": s3_endpoint, "RESYNC_ALLOWED_ROOTS": json.dumps([media]),
           "RESYNC_FEATURE_CACHE_DIR": str(local / "cache"), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    yield World(settings, Storage(settings), env, media, local, shared_data, server.api_url)
    server.stop()


def probe_frames(path: Path) -> tuple[int, float, bool]:
    """(decoded frame count, frame rate, has audio) by ffprobe."""
    info = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        capture_output=True, text=True, check=True).stdout)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    num, den = map(int, video["avg_frame_rate"].split("/"))
    return int(video["nb_read_frames"]), num / den, any(s["codec_type"] == "audio" for s in info["streams"])


def prefect_post(api: str, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(f"{api}/{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def successes(world: World) -> dict[str, int]:
    rows = world.manifest.rows(columns=["input_key", "status"]).to_pylist()
    counts: dict[str, int] = {}
    for r in rows:
        if r["status"] == "succeeded":
            counts[r["input_key"]] = counts.get(r["input_key"], 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------


def test_nightly_run_dubs_good_items_and_fails_bad_ones_alone(world: World):
    w = world
    videos, requests = [], []
    for vid, (name, speaker, _, _) in CLIPS.items():
        videos.append((vid, w.put(w.clip(vid), name), speaker))
    audio = {lang: w.put(w.shared / "audio" / name, name) for lang, name in LANGS.items()}
    requests += [(vid, lang, uri) for vid in CLIPS for lang, uri in audio.items()]
    # bad items: a truncated video (its header probes fine), a video without a face, an audio file
    # that is good at ingest and broken by the time the run reads it
    run_ffmpeg("-i", str(w.clip("glasses")), "-c", "copy", "-movflags", "+faststart",
               str(w.local / "whole.mp4"))
    data = (w.local / "whole.mp4").read_bytes()
    (w.local / "truncated.mp4").write_bytes(data[: len(data) // 2])
    run_ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=3", "-f", "lavfi", "-i",
               "sine=frequency=440:duration=3", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-shortest",
               str(w.local / "noface.mp4"))
    videos += [("corrupt", w.put(w.local / "truncated.mp4", "truncated.mp4"), "x"),
               ("noface", w.put(w.local / "noface.mp4", "noface.mp4"), "y")]
    bad_audio = w.put(w.shared / "audio" / "german2.wav", "glasses_ja.wav")
    requests += [("corrupt", "fr", audio["fr"]), ("noface", "fr", audio["fr"]), ("glasses", "ja", bad_audio)]
    w.ingest(videos, requests)
    w.storage.write_bytes(bad_audio, b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 40)

    summary = w.cli("run", "nightly", "--shard-size", "4", "--json", expect=3)  # 3: done, some items failed
    assert summary["planned"] == 9 and summary["succeeded"] == 6 and summary["failed"] == 3
    assert summary["failures"] == {"decode_error": 1, "no_face": 1, "audio_decode_error": 1}

    latest = w.manifest.latest()
    assert len(latest) == 9 and (latest["run_id"] == summary["run_id"]).all()
    bad = latest[latest["status"] == "failed"].set_index("video_id")
    assert bad.loc["corrupt", "error_class"] == "decode_error" and bad.loc["noface", "error_class"] == "no_face"
    assert bad.loc["glasses", "error_class"] == "audio_decode_error" and bad.loc["glasses", "language"] == "ja"
    assert all(isinstance(e, str) and e for e in bad["error"])
    assert sorted(successes(w).values()) == [1] * 6

    good = latest[latest["status"] == "succeeded"]
    for _, r in good.iterrows():
        local = w.local / f"{r['video_id']}_{r['language']}.mp4"
        local.write_bytes(w.storage.read_bytes(r["output_uri"]))
        assert w.storage.sha256(r["output_uri"]) == r["output_sha256"]
        frames, fps, has_audio = probe_frames(local)
        src_frames, src_fps, _ = probe_frames(w.clip(r["video_id"]))
        assert (frames, has_audio) == (src_frames, True) and fps == pytest.approx(src_fps, rel=1e-3)
        assert r["output_uri"].endswith(f"outputs/{r['language']}/{r['video_id']}/{r['input_key']}.mp4")
        qa = dict(r["qa"])
        assert qa["face_coverage"] > 0.9 and dict(r["stage_seconds"])["total_s"] > 0
        # every row carries the sync expert's verdict (how good it is: bench/quality's business)
        assert all(np.isfinite(qa[k]) for k in ("av_offset_frames", "av_confidence", "av_distance")), qa
        assert abs(qa["av_offset_frames"]) <= 15 and qa["identity_distance"] < 0.6

    # the dub carries the translated speech, not the source's
    from tasks.audio import envelope, load_audio

    dubbed = load_audio(w.storage, good[(good.video_id == "map") & (good.language == "de")].iloc[0]["output_uri"])
    t = np.arange(0, CLIPS["map"][2] - 0.1, 0.02)
    e = envelope(dubbed, t)
    assert np.corrcoef(e, envelope(load_audio(w.storage, audio["de"]), t))[0, 1] > 0.9
    assert np.corrcoef(e, envelope(load_audio(w.storage, f"{w.media}/speaker_map_5s.mp4"), t))[0, 1] < 0.5

    runs = {r["run_id"]: r for r in RunLog(DeltaTables(w.storage)).all()}
    assert runs[summary["run_id"]]["status"] == "succeeded" and runs[summary["run_id"]]["succeeded"] == 6

    # the Prefect server saw the flow, its shard tasks and the run report
    flows = prefect_post(w.prefect_api, "flow_runs/filter", {})
    assert any(f["state_type"] == "COMPLETED" for f in flows)
    tasks = prefect_post(w.prefect_api, "task_runs/filter", {})
    assert sum(t["name"].startswith("shard-") for t in tasks) == 3
    artifacts = prefect_post(w.prefect_api, "artifacts/filter", {})
    report = next(a for a in artifacts if a["key"] == "nightly-run")
    assert summary["run_id"] in report["data"] and "audio_decode_error" in report["data"]


def test_a_second_nightly_run_commits_nothing(world: World):
    version = DeltaTables(world.storage).open("manifests/dubs").version()
    summary = world.cli("run", "nightly", "--json")
    assert summary["planned"] == 0 and summary["succeeded"] == summary["failed"] == 0
    assert DeltaTables(world.storage).open("manifests/dubs").version() == version


def test_reprocess_after_fixing_the_audio_file(world: World):
    w = world
    first_run = w.manifest.latest().iloc[0]["run_id"]
    w.put(w.shared / "audio" / "german2.wav", "glasses_ja.wav")   # the vendor re-delivers the file
    summary = w.cli("run", "reprocess", "--error-class", "audio_decode_error", "--json")
    assert summary["planned"] == 1 and summary["succeeded"] == 1 and summary["failed"] == 0
    latest = w.manifest.latest().set_index(["video_id", "language"])
    assert latest.loc[("glasses", "ja"), "status"] == "succeeded"
    assert latest.loc[("glasses", "ja"), "run_id"] == summary["run_id"]
    assert latest.loc[("corrupt", "fr"), "status"] == "failed"        # not asked for, not touched
    # time travel: as of the first run the item had failed, and that row is still there
    then = w.manifest.as_of_run(first_run).to_pandas().set_index(["video_id", "language"])
    assert then.loc[("glasses", "ja"), "status"] == "failed"
    history = w.manifest.history("glasses", "ja")
    assert list(history["status"]) == ["failed", "succeeded"]

    # a still-bad item fails again, as a new attempt with its reason
    again = w.cli("run", "reprocess", "--error-class", "no_face", "--json", expect=3)
    assert again["planned"] == 1 and again["failures"] == {"no_face": 1}
    assert list(w.manifest.history("noface", "fr")["attempt"]) == [1, 2]


def processes() -> dict[int, str]:
    """pid -> command line of every process (from /proc; Ray retitles its workers ``ray::Class.method``)."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                found[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
    return found


def descendants(root: int) -> set[int]:
    """Every process started, directly or not, by ``root`` (from /proc's parent pids): this run's own,
    never another run's on the same machine."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def kill(pid: int) -> None:
    """SIGKILL, for real; a process that already ended is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_killing_a_dubbing_actor_mid_shard_loses_and_duplicates_nothing(world: World):
    w = world
    it = w.put(w.shared / "audio" / "italian1.wav", "italian1.wav")
    w.ingest([], [(vid, "it", it) for vid in CLIPS])
    before = successes(w)
    proc = w.spawn("run", "nightly", "--language", "it", "--json")
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        mine = descendants(proc.pid)
        busy = [pid for pid, cmd in processes().items() if cmd.startswith("ray::DubbingWorker.dub") and pid in mine]
        if busy:
            time.sleep(1.0)   # mid-item, not at its first instruction
            kill(busy[0])
            killed = busy[0]
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=400)
    assert killed is not None, "never saw a dubbing actor at work"
    assert proc.returncode == 0, stderr[-4000:]
    summary = json.loads(stdout[stdout.find("{"):])
    assert summary["planned"] == summary["succeeded"] == 3
    after = successes(w)
    new = {k: n for k, n in after.items() if k not in before}
    assert len(new) == 3 and set(new.values()) == {1}
    assert all(before[k] == after[k] for k in before)


def test_sigkill_of_the_flow_process_then_rerun_does_only_the_missing_items(world: World):
    w = world
    es = w.put(w.shared / "audio" / "spanish1.wav", "spanish1.wav")
    w.ingest([], [(vid, "es", es) for vid in CLIPS])
    tables = DeltaTables(w.storage)
    proc = w.spawn("run", "nightly", "--language", "es", "--shard-size", "1")
    deadline = time.monotonic() + 300
    committed = 0
    while proc.poll() is None and time.monotonic() < deadline:
        rows = tables.read("manifests/dubs", columns=["language"], filters=[("language", "=", "es")])
        committed = rows.num_rows
        if committed:
            break
        time.sleep(0.5)
    assert proc.poll() is None and committed >= 1, "the run ended before it could be killed"
    mine = descendants(proc.pid)           # taken before the kill: orphans lose their parent
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(2)
    for pid, cmd in processes().items():   # the killed driver's cluster, if it outlived it (never another run's)
        if pid in mine and (cmd.startswith("ray::") or "raylet" in cmd or "gcs_server" in cmd):
            kill(pid)

    done_before = tables.read("manifests/dubs", columns=["input_key"], filters=[("language", "=", "es")]).num_rows
    assert 1 <= done_before < 3
    summary = w.cli("run", "nightly", "--language", "es", "--json")
    assert summary["planned"] == 3 - done_before and summary["succeeded"] == 3 - done_before
    rows = tables.read("manifests/dubs", columns=["input_key", "status"], filters=[("language", "=", "es")]).to_pylist()
    assert len(rows) == 3 and len({r["input_key"] for r in rows}) == 3 and {r["status"] for r in rows} == {"succeeded"}


def test_finetune_registers_a_speaker_model_that_the_next_nightly_run_uses(world: World):
    w = world
    record = w.cli("run", "finetune", "--speaker", "man", "--syncformer-seconds", "3", "--generator-seconds", "6", "--json")
    registry = ModelRegistry(DeltaTables(w.storage))
    latest = registry.latest("man")
    assert latest is not None and latest["version"] == record["version"] and latest["parent"] == record["parent"]
    assert latest["uri"].startswith(f"{w.settings.root}/models/speakers/man/")
    assert w.storage.exists(f"{latest['uri']}/model.safetensors")

    summary = w.cli("run", "nightly", "--language", "fr", "--json")
    assert summary["planned"] == summary["succeeded"] == 1        # only the man's French item is re-dubbed
    newest = w.manifest.latest().set_index(["video_id", "language"])
    assert newest.loc[("map", "fr"), "speaker_model_version"] == record["version"]
    assert newest.loc[("map", "fr"), "run_id"] == summary["run_id"]
    assert pd.isna(newest.loc[("glasses", "fr"), "speaker_model_version"])


def test_a_nightly_run_gives_a_speaker_with_enough_footage_a_model_first(world: World):
    """With personalize_min_footage_s set, the run fine-tunes (a Ray task) and registers a model for
    woman2 (4 s of footage) before planning, and dubs her item with it; man already has a model
    from this base; woman, and the speakers of the two broken videos (2.5 and 3 s), have too little
    footage. The cost is in the run's record."""
    w = world
    env = {**w.env, "RESYNC_PERSONALIZE_MIN_FOOTAGE_S": "3.5", "RESYNC_PERSONALIZE_SYNCFORMER_S": "2",
           "RESYNC_PERSONALIZE_GENERATOR_S": "3"}
    saved, w.env = w.env, env
    try:
        summary = w.cli("run", "nightly", "--language", "fr", "--json")
    finally:
        w.env = saved
    registry = ModelRegistry(DeltaTables(w.storage))
    made = registry.latest("woman2")
    assert made is not None and made["parent"] == registry.latest(None)["version"]
    assert registry.latest("woman") is None and len([m for m in registry.models() if m["speaker_id"] == "man"]) == 1
    assert summary["planned"] == summary["succeeded"] == 1
    newest = w.manifest.latest().set_index(["video_id", "language"])
    assert newest.loc[("mpeg4", "fr"), "speaker_model_version"] == made["version"]
    record = json.loads(RunLog(DeltaTables(w.storage)).get(summary["run_id"])["parameters"])
    [entry] = record["personalized"]
    assert entry["speaker_id"] == "woman2" and entry["version"] == made["version"] and entry["seconds"] > 0


def test_qa_report_opens_in_a_headless_browser(world: World):
    """The report of the first run compared with today's manifest: self-contained, every section
    present, no console errors, and a screenshot that is not blank."""
    w = world
    runs = sorted(RunLog(DeltaTables(w.storage)).all(), key=lambda r: r["started_at"])
    first = next(r["run_id"] for r in runs if r["kind"] == "nightly")
    html_path = w.local / "qa" / "report.html"
    report = w.cli("run", "qa", "--compare", first, "-o", str(html_path), "--json")
    assert report["items"] == 9 + 3 + 3 and report["failed"] == 2        # corrupt and noface are still failed
    assert report["fixed"] == ["glasses/ja"] and report["regressed"] == []
    table = pd.read_parquet(html_path.with_suffix(".parquet"))
    assert len(table) == 15 and {"needs_review", "review_reasons", "av_confidence", "av_distance"} <= set(table.columns)
    assert table[table.status == "succeeded"].av_confidence.notna().all()
    page = html_path.read_text()
    assert "least in sync" in page and "renderer obedience" in page  # mouth strips where the expert looks; what is which
    assert "personalize_min_footage_s" in page and "woman2" in page     # the speaker model a night made, and its cost
    assert "http://" not in page and "https://" not in page          # opens with no network

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs it (infra/bootstrap.sh)")
    shot = w.local / "qa" / "report.png"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
            "--v=0", "--window-size=1280,2000", f"--user-data-dir={w.local / 'chromium'}"]
    dom = subprocess.run([*args, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    snap = subprocess.run([*args, f"--screenshot={shot}", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    for ids in ("summary", "failures", "metrics", "worst", "throughput", "comparison"):
        assert f'id="{ids}"' in dom.stdout
    console = [line for line in dom.stderr.splitlines() + snap.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    assert dom.stdout.count("<img") >= 8                                 # metric plots and frame strips
    import cv2

    image = cv2.imread(str(shot))
    assert image is not None and image.shape[1] == 1280 and image.std() > 20   # not a blank page
