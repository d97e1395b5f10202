"""`resync run nightly --ray-address` against a real multi-node cluster started with `ray start`.

The head is a plain `ray start --head` on 127.0.0.1, which (Ray 2.60) turns token authentication on
because a token exists; a second node joins it with `ray start --address` and offers a custom
resource of its own. The run's client has only RAY_AUTH_TOKEN_PATH, not RAY_AUTH_MODE (the setup
that used to time out after 50 s), and the pools ask for the custom resources, so the run must put
its tracking actor on the head and its dubbing actor on the second node and say so in its summary.
Wrong, missing or unreachable: the CLI fails within seconds, naming the cause. One item, on the
S3 endpoint, Prefect's ephemeral API; the nodes are stopped by pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from catalogs.settings import Settings
from catalogs.storage import Storage
from infra.dev.local_service import free_port
from infra.dev.ray_cluster import RayCluster, session_members, start_ray_cluster
from tests.conftest import REPO, run_ffmpeg
from tests.flows.test_orchestration import World
from tests.infra.test_configs import listening_addresses

pytestmark = [pytest.mark.media, pytest.mark.s3]

TRACKING, DUBBING = {"resync_tracking": 1}, {"resync_dubbing": 1}


@pytest.fixture(scope="module")
def cluster() -> RayCluster:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESYNC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # actors import our code
    started = time.monotonic()
    c = start_ray_cluster(head_resources=TRACKING, workers=[DUBBING], env=env)
    print(f"cluster up in {time.monotonic() - started:.1f} s")
    yield c
    pids = [node.process.pid for node in c.nodes]
    c.remove()
    assert all(not session_members(pid) for pid in pids), "a node left processes behind"


@pytest.fixture(scope="module")
def world(cluster: RayCluster, shared_data: Path, s3_endpoint: str, tmp_path_factory, ffmpeg) -> World:
    import s3fs

    local = tmp_path_factory.mktemp("ray-cluster")
    bucket = f"resync-ray-{os.getpid()}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True).mkdir(bucket)
    media = f"s3://{bucket}/media"
    settings = Settings(root=f"s3://{bucket}/root", allowed_roots=[media], s3_endpoint_url=s3_endpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}   # no RAY_AUTH_MODE: as in the bug
    env.update({"PREFECT_HOME": str(local / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "RESYNC_ROOT": settings.root, "RESYNC_S3_ENDPOINT_URL": s3_endpoint,
                "RESYNC_ALLOWED_ROOTS": json.dumps([media]), "RESYNC_FEATURE_CACHE_DIR": str(local / "cache"),
                "HOME": str(local / "home"),   # no ~/.ray/auth_token: the token comes only from what a test gives
                "RESYNC_QA_METRICS": "false",   # re-tracking the output: quality, which other tests check
                "RESYNC_TRACKING_ACTOR_RESOURCES": json.dumps(TRACKING),
                "RESYNC_DUBBING_ACTOR_RESOURCES": json.dumps(DUBBING)})
    (local / "home").mkdir()
    return World(settings, Storage(settings), env, media, local, shared_data, "")


def resync(world: World, *args: str, env: dict[str, str], timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], env={**world.env, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def test_nightly_run_joins_a_token_auth_cluster_and_places_actors_on_both_nodes(cluster: RayCluster, world: World):
    w = world
    # 2.5 s of a real clip and of a real translation: the test is about where the work runs
    run_ffmpeg("-i", str(w.shared / "videos" / "speaker_map_5s.mp4"), "-t", "2.5", "-c:v", "libx264", "-preset",
               "veryfast", "-c:a", "aac", str(w.local / "map.mp4"))
    run_ffmpeg("-i", str(w.shared / "audio" / "french1.wav"), "-t", "2.5", str(w.local / "fr.wav"))
    video, audio = w.put(w.local / "map.mp4", "map.mp4"), w.put(w.local / "fr.wav", "fr.wav")
    w.ingest([("map", video, "man")], [("map", "fr", audio)])

    proc, seconds = resync(w, "run", "nightly", "--ray-address", cluster.address, "--json", env=cluster.client_env())
    print(f"nightly run on the cluster: {seconds:.1f} s")
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    summary = json.loads(proc.stdout[proc.stdout.find("{"):])
    assert summary["planned"] == summary["succeeded"] == 1
    actors = {a["pool"]: a for a in summary["actors"]}
    assert set(actors) == {"tracking", "dubbing"} and len(summary["actors"]) == 2
    assert actors["tracking"]["resources"].get("resync_tracking") == 1       # only the head offers it
    assert actors["dubbing"]["resources"].get("resync_dubbing") == 1         # only the second node does
    assert actors["tracking"]["node_id"] != actors["dubbing"]["node_id"]
    assert {a["node_ip"] for a in actors.values()} == {"127.0.0.1"}
    assert cluster.token_path.read_text() not in proc.stdout + proc.stderr
    row = w.manifest.latest().iloc[0]
    assert row["status"] == "succeeded" and w.storage.exists(row["output_uri"])
    # both nodes, and everything they started, listen on 127.0.0.1 only
    hosts = {host for node in cluster.nodes for host, _ in listening_addresses(node.process.pid)}
    assert hosts and hosts <= {"127.0.0.1", "::ffff:127.0.0.1"}, hosts


@pytest.mark.parametrize("case", ["wrong token", "no token", "unreachable"])
def test_a_cluster_that_cannot_be_joined_fails_within_seconds_naming_the_cause(cluster: RayCluster, world: World,
                                                                               case: str):
    wrong = "0" * 64
    address, env, cause = {
        "wrong token": (cluster.address, {"RAY_AUTH_TOKEN": wrong}, "rejected this client's token"),
        "no token": (cluster.address, {}, "requires token authentication and no token was found"),
        "unreachable": (f"ray://127.0.0.1:{free_port()}", cluster.client_env(), "is unreachable"),
    }[case]
    proc, seconds = resync(world, "run", "nightly", "--ray-address", address, env=env, timeout=120)
    assert proc.returncode == 1, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    message = " ".join((proc.stdout + proc.stderr).split())
    assert cause in message and address in message
    assert wrong not in message and cluster.token_path.read_text() not in message
    assert seconds < 20, f"took {seconds:.1f} s"
