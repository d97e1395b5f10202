"""A local multi-node Ray cluster on 127.0.0.1, started the way real nodes are, for development and tests.

``python -m infra.dev.ray_cluster --worker-resources '{"resync_dubbing": 1}'`` runs ``ray start --head``
and one ``ray start --address`` worker node, both on 127.0.0.1, with token authentication (a fresh
token in the session folder, given to the nodes by RAY_AUTH_TOKEN_PATH), and prints the
``--ray-address`` and the variable a client needs. Each node is a ``ray start --block`` child:
stopping it by pid (SIGTERM) stops that node's processes and nothing else (``ray stop`` would stop
every Ray cluster on the machine, other people's included).

Two things Ray does on purpose need care on one machine:

- ``ray start --address`` refuses to join unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, and with it
  rewrites 127.0.0.1 (in --address and --node-ip-address) to the machine's public address, where the
  head does not listen. The worker is therefore given the head as ``127.1:PORT`` (the same address,
  spelled so that Ray keeps it; GRPC_DNS_RESOLVER=native lets Ray's gRPC resolve it) and no
  --node-ip-address: Ray derives 127.0.0.1 from the route to the head, and every server of the node
  then listens on 127.0.0.1 only.
- The head's Ray Client proxier forks one server per driver. With gRPC's fork support on (its
  default), that child can die as it starts and the driver waits ~40 s for "Starting Ray client
  server failed"; the head is started with GRPC_ENABLE_FORK_SUPPORT=0, and the client
  (``infra.ray_connect.join``) tries again when it happens anyway.
- The head turns token authentication on by itself when a token exists (Ray 2.60's default, which
  is what a plain ``ray start --head`` does); worker nodes do not, so they get RAY_AUTH_MODE=token.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from infra.dev.local_service import HOST, free_port

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


@dataclass
class RayNode:
    """One ``ray start --block`` process and what it was started with."""

    process: subprocess.Popen
    log_path: Path
    resources: dict[str, float]

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to this node's ``ray start``, which stops the processes it started; SIGKILL to
        what is left of its own process group after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in session_members(self.process.pid):   # its own session only (start_new_session)
            with contextlib.suppress(ProcessLookupError):   # already gone
                os.kill(pid, signal.SIGKILL)


@dataclass
class RayCluster:
    """A head and its worker nodes on 127.0.0.1; ``stop()`` stops exactly these."""

    folder: Path
    token_path: Path
    gcs_port: int
    client_port: int
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        """What ``--ray-address`` takes."""
        return f"ray://{HOST}:{self.client_port}"

    def client_env(self) -> dict[str, str]:
        """What a client of this cluster needs in its environment (the token by file, not by value)."""
        return {"RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def stop(self) -> None:
        for node in reversed(self.nodes):     # workers first, then the head
            node.stop()
        self.nodes.clear()

    def remove(self) -> None:
        """Stop the nodes and delete the session folder (logs, sockets, token)."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def session_members(sid: int) -> list[int]:
    """Pids of the live processes in session ``sid`` (a node started with start_new_session)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


# Fixed ports come from below the kernel's ephemeral range (ip_local_port_range, 32768+ on Linux) and
# above Ray's worker ports (10002-19999) and Ray Client's per-driver servers (23000-23999): a port
# picked free here cannot then be taken by a server that asks for port 0 (Ray starts many) before
# the node that was given it binds it.
PORT_RANGE = (24000, 32768)


def pick_ports(n: int, taken: set[int]) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now, none of them in ``taken`` (which they join)."""
    found: list[int] = []
    while len(found) < n:
        port = random.randrange(*PORT_RANGE)
        if port in taken:
            continue
        try:
            free_port(port)
        except OSError:
            continue
        taken.add(port)
        found.append(port)
    return found


def _node_ports(taken: set[int]) -> list[str]:
    listen, grpc, runtime_env, metrics = pick_ports(4, taken)
    return ["--dashboard-agent-listen-port", str(listen), "--dashboard-agent-grpc-port", str(grpc),
            "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics)]


def _start_node(args: list[str], env: dict[str, str], log_path: Path, resources: dict[str, float],
                timeout: float) -> RayNode:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([*RAY, "start", "--block", "--disable-usage-stats", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=log_path.parent)
    node = RayNode(proc, log_path, resources)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            node.stop()
            raise RuntimeError(f"ray start exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if b"Ray runtime started" in log_path.read_bytes():
            return node
        time.sleep(0.2)
    node.stop()
    raise RuntimeError(f"ray start did not come up within {timeout} s:\n{log_path.read_text()[-3000:]}")


def start_ray_cluster(folder: Path | None = None, *, head_cpus: float = 1, head_resources: dict[str, float] | None = None,
                      workers: list[dict[str, float]] | None = None, worker_cpus: float = 1,
                      object_store_mb: int = 200, env: dict[str, str] | None = None,
                      timeout: float = 90) -> RayCluster:
    """Start a head (with a Ray Client server) and one worker node per entry of ``workers`` (its
    custom resources), all on 127.0.0.1 with token authentication. ``folder`` holds the token and
    Ray's session files; keep it short (Ray's socket paths must fit 107 bytes), default a new
    folder under /tmp. ``env`` is the nodes' environment (default this process's): their actors
    import the code and read S3 credentials from it."""
    folder = Path(folder or tempfile.mkdtemp(prefix="rs-ray-", dir="/tmp")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    token_path = folder / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    base = {k: v for k, v in (env or os.environ).items()
            if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    base.update(RAY_AUTH_TOKEN_PATH=str(token_path), RAY_USAGE_STATS_ENABLED="0")
    taken: set[int] = set()
    gcs_port, client_port, dashboard_port = pick_ports(3, taken)
    memory = ["--object-store-memory", str(object_store_mb * 1024 * 1024)]
    cluster = RayCluster(folder, token_path, gcs_port, client_port)
    head_env = {"GRPC_ENABLE_FORK_SUPPORT": "0",    # see the module docstring; an explicit setting in env wins
                **base, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}   # keeps the head's servers on 127.0.0.1
    try:
        cluster.nodes.append(_start_node(
            ["--head", "--node-ip-address", HOST, "--port", str(gcs_port), "--ray-client-server-port", str(client_port),
             "--include-dashboard", "false", "--dashboard-port", str(dashboard_port), "--temp-dir", str(folder / "t"),
             "--num-cpus", f"{head_cpus:g}", "--num-gpus", "0", "--resources", json.dumps(head_resources or {}),
             *memory, *_node_ports(taken)],
            head_env, folder / "head.log", head_resources or {}, timeout))
        worker_env = {**base, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "GRPC_DNS_RESOLVER": "native",
                      "RAY_AUTH_MODE": "token"}
        for i, resources in enumerate(workers or []):
            cluster.nodes.append(_start_node(
                ["--address", f"127.1:{gcs_port}", "--num-cpus", f"{worker_cpus:g}", "--num-gpus", "0",
                 "--resources", json.dumps(resources), *memory, *_node_ports(taken)],
                worker_env, folder / f"worker-{i}.log", resources, timeout))
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=None, help="session folder (default: a new one under /tmp)")
    ap.add_argument("--head-resources", type=json.loads, default={}, help='custom resources of the head, JSON')
    ap.add_argument("--worker-resources", type=json.loads, action="append", default=None,
                    help='custom resources of one worker node, JSON (repeat for more nodes; default one node with none)')
    ap.add_argument("--cpus", type=float, default=1, help="CPUs each node offers (default 1)")
    args = ap.parse_args()
    cluster = start_ray_cluster(args.folder, head_cpus=args.cpus, head_resources=args.head_resources,
                                workers=args.worker_resources or [{}], worker_cpus=args.cpus)
    print(f"Ray cluster: --ray-address {cluster.address}\n  export RAY_AUTH_TOKEN_PATH={cluster.token_path}\n"
          f"  logs in {cluster.folder}; Ctrl-C stops it", flush=True)
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        with contextlib.suppress(KeyboardInterrupt):   # Ctrl-C or SIGTERM: the way to stop it
            signal.pause()
    finally:
        cluster.remove()


if __name__ == "__main__":
    main()
