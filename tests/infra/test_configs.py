"""The deployment and cluster files agree with the code they point at, and keep their promises.

prefect.yaml must name real ``@flow`` functions with parameters a run can satisfy; the Ray configs
must ask for GPUs where the dubbing pool needs them, let nodes join each other, and hold no
credentials; the dev Prefect server must answer on 127.0.0.1 and nowhere else. Nothing here needs
AWS, Kubernetes or Docker: the configs are checked as parsed data (the launcher one against Ray's
own schema) and the server is started for real.
"""

from __future__ import annotations

import copy
import importlib
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "prefect.yaml"
CLUSTER_YAML = REPO / "infra" / "ray" / "cluster.yaml"
RAYCLUSTER_YAML = REPO / "infra" / "ray" / "raycluster.yaml"
DOCKERFILE = REPO / "infra" / "Dockerfile"

DEPLOYMENTS = {
    "nightly-localization": "flows/nightly.py:nightly_localization",
    "finetune-speaker": "flows/finetune.py:finetune_speaker",
    "reprocess-failed": "flows/reprocess.py:reprocess_failed",
    "train-base": "flows/train.py:train_base",
}
# Parameters a run must pass although prefect.yaml gives them no value (its comments say so).
REQUIRED_AT_RUN = {"finetune-speaker": {"speaker_id"}}
CREDENTIAL_NAME = re.compile(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)|secret|password|token", re.I)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def deployments() -> dict[str, dict]:
    return {d["name"]: d for d in load(PREFECT_YAML)["deployments"]}


# --- prefect.yaml ----------------------------------------------------------------------------

def test_prefect_yaml_deploys_the_four_jobs_to_the_process_pool():
    project = load(PREFECT_YAML)
    assert project["name"] == "resync"
    assert project["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $RESYNC_REPO }}"}}]
    deps = deployments()
    assert {name: d["entrypoint"] for name, d in deps.items()} == DEPLOYMENTS
    assert {d["work_pool"]["name"] for d in deps.values()} == {"resync-process"}
    assert deps["nightly-localization"]["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": True}]
    assert all(not d.get("schedules") for name, d in deps.items() if name != "nightly-localization")


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_entrypoint_is_a_flow_whose_required_parameters_a_run_supplies(name: str):
    from prefect import Flow

    deployment = deployments()[name]
    path, function = deployment["entrypoint"].split(":")
    assert (REPO / path).is_file()
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), function)
    assert isinstance(flow, Flow)
    given = set(deployment.get("parameters") or {})
    assert given <= set(flow.parameters.properties), "prefect.yaml passes a parameter the flow does not take"
    assert set(flow.parameters.required or []) - given == REQUIRED_AT_RUN.get(name, set())


# --- Ray cluster configs ---------------------------------------------------------------------

def test_cluster_launcher_config_is_valid_and_has_a_gpu_group():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(CLUSTER_YAML)
    validate_config(prepare_config(copy.deepcopy(config)))   # Ray's own schema, after its defaults
    types = config["available_node_types"]
    assert set(types) == {"head", "cpu-workers", "gpu-workers"} and config["head_node_type"] == "head"
    assert types["gpu-workers"]["resources"]["GPU"] >= 1
    assert types["gpu-workers"]["min_workers"] >= 1   # the dubbing pool sees GPUs only if one is up
    assert types["head"]["resources"] == {"CPU": 0}
    assert config["docker"]["image"] == "resync:latest"
    assert "-e RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1" in config["docker"]["run_options"]
    # token auth on every node, the token copied from the launching machine to Ray's default path
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    head_start = " ".join(config["head_start_ray_commands"])
    for flag in ("--head", "--port=6379", "--ray-client-server-port=10001", "--dashboard-host=127.0.0.1",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert flag in head_start


def test_kuberay_cluster_has_a_gpu_group_and_takes_credentials_from_the_secret():
    cluster = load(RAYCLUSTER_YAML)
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-workers", "gpu-workers"}
    gpu = groups["gpu-workers"]
    assert gpu["minReplicas"] >= 1
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    for template in [spec["headGroupSpec"]["template"], *(g["template"] for g in groups.values())]:
        for container in template["spec"]["containers"]:
            assert container["image"] == "resync:latest"
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]["value"] == "1"
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "resync-s3", "key": key}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "resync-ray-auth", "key": "auth_token"}


def literal_credentials(node: Any, key: str = "") -> Iterator[str]:
    """Values that sit under a credential-like name: a mapping key, or a Kubernetes env ``name``."""
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and "value" in node and CREDENTIAL_NAME.search(node["name"]):
            yield f"{node['name']}={node['value']!r}"
        for k, v in node.items():
            yield from literal_credentials(v, str(k))
    elif isinstance(node, list):
        for item in node:
            yield from literal_credentials(item, key)
    elif isinstance(node, str) and node and CREDENTIAL_NAME.search(key):
        yield f"{key}={node!r}"


@pytest.mark.parametrize("path", [PREFECT_YAML, CLUSTER_YAML, RAYCLUSTER_YAML, DOCKERFILE], ids=lambda p: p.name)
def test_no_literal_credentials(path: Path):
    text = path.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "an AWS access key id"
    # NAME=value or NAME: value, unless the value is a shell reference ("$VAR").
    assert not re.search(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)\s*[=:]\s*(?![\"']?\$)[^\s{}]", text)
    if path.suffix == ".yaml":
        config = load(path)
        # The launcher's file_mounts map paths to paths (remote: local), never contents: the token
        # file it copies is named there, so it is checked as a path and left out of the scan.
        mounts = config.pop("file_mounts", None) or {}
        assert all(re.fullmatch(r"[~/][\w./-]*", p) for pair in mounts.items() for p in pair), mounts
        assert list(literal_credentials(config)) == []


def test_dockerfile_installs_like_bootstrap():
    """The image and a developer's .venv get the same packages the same way (test-only system
    packages, ``need_test_apt`` in bootstrap.sh, stay out of the image)."""
    bootstrap = (REPO / "infra" / "bootstrap.sh").read_text()
    dockerfile = DOCKERFILE.read_text()
    pip_args = re.findall(r"^\$PIP install -q (.+)$", bootstrap, re.M)
    assert len(pip_args) == 4
    for args in pip_args:
        assert f"pip install -q {args}" in dockerfile
    apt_line = next(line for line in dockerfile.splitlines() if "python3.11-venv" in line)
    for package in re.findall(r"need_apt\+=\(([\w.+-]+)\)", bootstrap):   # runtime packages, by name
        assert package in apt_line.split()


# --- dev Prefect server ----------------------------------------------------------------------

def process_tree(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += children.get(p, [])
    return tree


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(host, port) of every TCP socket listening in ``pid`` or its descendants, read from /proc."""
    inodes = set()
    for p in process_tree(pid):
        try:
            fds = list(Path(f"/proc/{p}/fd").iterdir())
        except OSError:      # the process exited
            continue
        for fd in fds:
            try:             # a busy server opens and closes files while we read: skip only that fd
                link = fd.readlink().name
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:   # 0A = LISTEN
                hex_host, hex_port = local.split(":")
                raw = bytes.fromhex(hex_host)      # 32-bit words in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux /proc")
def test_dev_prefect_server_answers_on_loopback_only(tmp_path: Path):
    from infra.dev.prefect_server import HOST, start_prefect_server

    server = start_prefect_server(home=tmp_path / "prefect", log_path=tmp_path / "server.log")
    try:
        assert server.api_url == f"http://127.0.0.1:{server.port}/api"
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=10) as response:
            assert response.read() == b"true"
        addresses = listening_addresses(server.process.pid)
        assert (HOST, server.port) in addresses
        assert {host for host, _ in addresses} == {"127.0.0.1"}, addresses
        assert (tmp_path / "prefect" / "prefect.db").exists()   # its state lives in the given home
    finally:
        server.stop()
    assert server.process.poll() is not None
