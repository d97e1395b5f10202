"""The deployment path end to end, as an operator runs it: a real `prefect server` on 127.0.0.1,
`prefect work-pool create resync-process --type process`, `prefect deploy --all` from the repo's
prefect.yaml, a process worker started the way prefect.yaml's header says (RESYNC_REPO and the
RESYNC_* settings in its environment), then `prefect deployment run` of the nightly deployment.

The run must reach Completed and leave its dubs and manifest rows in the test's own storage root:
prefect.yaml passes no parameters, so the root reaches the flow only through the worker's
environment. One 2.5 s clip of a real speaker into two languages (one track, two dubs), QA off:
the test is about the deployment, not the dub.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from catalogs.delta import DeltaTables
from catalogs.ingest import CatalogIngest
from catalogs.manifest import DubManifest
from catalogs.runs import RunLog
from catalogs.schemas import DUBS_TABLE
from catalogs.settings import Settings
from catalogs.storage import Storage
from infra.dev.prefect_server import start_prefect_server
from infra.dev.ray_cluster import session_members
from tests.conftest import REPO, run_ffmpeg

pytestmark = [pytest.mark.media]

POOL = "resync-process"
DEPLOYMENT = "nightly_localization/nightly-localization"
LANGS = {"fr": "french1.wav", "de": "german1.wav"}


def prefect(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    """Run the `prefect` CLI of this venv (as an operator would) and return its output; fail loudly."""
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)}: rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def api(url: str, path: str, body: dict | None = None) -> dict | list:
    req = urllib.request.Request(f"{url}/{path}", data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started in its own session, with whatever it started (a flow run, Ray)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_prefect_deploy_all_then_a_deployment_run_of_nightly_completes_into_the_workers_root(
        shared_data: Path, tmp_path: Path, ffmpeg: str):
    started = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - started, 1)

    # the catalog: one speaker's 2.5 s, dubbed into two languages
    media, root = tmp_path / "media", tmp_path / "root"
    media.mkdir()
    run_ffmpeg("-i", str(shared_data / "videos" / "speaker_map_5s.mp4"), "-t", "2.5", "-c:v", "libx264", "-preset",
               "veryfast", "-c:a", "aac", str(media / "map.mp4"))
    for lang, name in LANGS.items():
        run_ffmpeg("-i", str(shared_data / "audio" / name), "-t", "2.5", str(media / f"{lang}.wav"))
    (media / "videos.csv").write_text(f"video_id,uri,speaker_id\nmap,{media / 'map.mp4'},man\n")
    (media / "requests.csv").write_text("video_id,language,audio_uri\n"
                                        + "".join(f"map,{lang},{media / f'{lang}.wav'}\n" for lang in LANGS))
    settings = Settings(root=str(root), allowed_roots=[str(media)])
    storage = Storage(settings)
    report = CatalogIngest(storage).run(str(media / "videos.csv"), str(media / "requests.csv"))
    assert not report.rejects, report.rejects
    phase("catalog")

    server = start_prefect_server(home=tmp_path / "prefect-server", log_path=tmp_path / "prefect-server.log")
    worker: subprocess.Popen | None = None
    flow_pid: int | None = None           # the flow run's process: the leader of its own session
    try:
        client = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RESYNC_"))}
        client.update(PREFECT_API_URL=server.api_url, PREFECT_HOME=str(tmp_path / "prefect-client"),
                      PREFECT_SERVER_ANALYTICS_ENABLED="false")
        phase("server")
        prefect(["work-pool", "create", POOL, "--type", "process"], client)
        # The worker's environment is the only way settings reach the flow (prefect.yaml: parameters {}).
        worker_env = {**client, "RESYNC_REPO": str(REPO), "RESYNC_ROOT": str(root),
                      "RESYNC_ALLOWED_ROOTS": json.dumps([str(media)]),
                      "RESYNC_FEATURE_CACHE_DIR": str(tmp_path / "cache"), "RESYNC_QA_METRICS": "false",
                      "RESYNC_COMPILE_GENERATOR": "false",
                      "PREFECT_WORKER_QUERY_SECONDS": "1"}
        log = open(tmp_path / "worker.log", "wb")
        # started before deploying: its start-up overlaps `prefect deploy`
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
                                  env=worker_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        out = prefect(["--no-prompt", "deploy", "--all"], client)
        for name in ("nightly-localization", "finetune-speaker", "reprocess-failed", "train-base"):
            assert name in out, out
        phase("deployed")

        deployment = api(server.api_url, f"deployments/name/{DEPLOYMENT}")
        assert deployment["parameters"] == {} and deployment["work_pool_name"] == POOL
        assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] \
            == "{{ $RESYNC_REPO }}"                      # resolved on the worker, not at deploy time
        out = prefect(["deployment", "run", DEPLOYMENT], client)
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)

        deadline = time.monotonic() + 240
        state = None
        while time.monotonic() < deadline:
            run = api(server.api_url, f"flow_runs/{flow_run_id}")
            if run.get("infrastructure_pid"):
                flow_pid = int(str(run["infrastructure_pid"]).rsplit(":", 1)[-1])
            state = run["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-4000:]
            time.sleep(0.5)
        phase("run finished")
        worker_log = (tmp_path / "worker.log").read_text(errors="replace")
        assert state == "COMPLETED", f"flow run ended {state}\n{worker_log[-6000:]}"
        assert run["deployment_id"] == deployment["id"] and run["parameters"] == {}
        tasks = api(server.api_url, "task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        assert sum(t["name"].startswith("shard-") and t["state_type"] == "COMPLETED" for t in tasks) == 1
        # the flow run's process (its own session, says the worker) ends, and the embedded Ray
        # cluster it started ends with it: a worker serves night after night
        assert flow_pid, "the worker recorded no process for the flow run"
        deadline = time.monotonic() + 60
        while (left := session_members(flow_pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        phase("flow process gone")
        assert not left, {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left}
    finally:
        if worker is not None:
            stop(worker)
        for pid in session_members(flow_pid) if flow_pid else []:   # a run that failed the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.stop()

    # the run wrote to the worker's root, and only there
    tables = DeltaTables(storage)
    [run_row] = [r for r in RunLog(tables).all() if r["kind"] == "nightly"]
    assert run_row["status"] == "succeeded" and run_row["planned"] == run_row["succeeded"] == len(LANGS)
    rows = DubManifest(tables).rows().to_pylist()
    assert sorted(r["language"] for r in rows) == sorted(LANGS)
    assert {r["status"] for r in rows} == {"succeeded"} and {r["run_id"] for r in rows} == {run_row["run_id"]}
    assert len({r["input_key"] for r in rows}) == len(rows)
    for r in rows:
        assert r["output_uri"] == str(root / "outputs" / r["language"] / "map" / f"{r['input_key']}.mp4")
        assert storage.sha256(r["output_uri"]) == r["output_sha256"]
    assert sorted(p.name for p in (root / "outputs").rglob("*") if p.is_file()) \
        == sorted(f"{r['input_key']}.mp4" for r in rows)          # no temporary or stray files
    assert DubManifest(tables).version_of_run(run_row["run_id"]) == tables.open(DUBS_TABLE).version()
    phase("checked")
    print(f"deployment test phases (s since start): {phases}")
