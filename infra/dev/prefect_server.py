"""A local Prefect API server on 127.0.0.1, for development and tests.

Run ``python -m infra.dev.prefect_server --port 4200`` and point resync at it with
``PREFECT_API_URL=http://127.0.0.1:4200/api``; then the deployments in prefect.yaml can be
created and served by a process worker. Without a server the flows use Prefect's ephemeral API,
which is enough for one-off runs but has no schedules, work pools or UI.
It runs as a separate process with its own PREFECT_HOME (SQLite database and settings), so a
test or a developer's server never touches the user's ~/.prefect.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]


def free_port(port: int = 0) -> int:
    """``port`` if nothing listens on it (0: any free port); OSError if something does.

    Checked before starting, or a server already on the port would pass the health check for ours.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        return s.getsockname()[1]


@dataclass
class PrefectServer:
    process: subprocess.Popen
    port: int

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def server_env(home: Path) -> dict[str, str]:
    """The caller's environment, with Prefect's state kept in ``home`` and nothing phoned home.

    PREFECT_API_URL is dropped: it tells clients where a server is and must not point the server
    at another one.
    """
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def start_prefect_server(port: int | None = None, *, home: Path, log_path: Path | None = None,
                         timeout: float = 60.0) -> PrefectServer:
    """Start ``prefect server start`` bound to loopback and wait until /api/health answers."""
    port = free_port(port or 0)
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    with open(log_path, "ab") if log_path else contextlib.nullcontext(subprocess.DEVNULL) as log:
        # cwd=home: a prefect.toml or .env in the caller's directory must not configure the server.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=server_env(home), cwd=home)
    server = PrefectServer(proc, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(f"{server.api_url}/health", timeout=1).close()
            return server
        except OSError:
            time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"prefect server did not answer on {HOST}:{port} within {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=4200, help="port on 127.0.0.1 (default 4200)")
    ap.add_argument("--home", type=Path, default=REPO / ".work" / "prefect",
                    help="PREFECT_HOME: database and settings (default .work/prefect in the checkout)")
    args = ap.parse_args()
    server = start_prefect_server(args.port, home=args.home)
    print(f"Prefect API: {server.api_url}  (export PREFECT_API_URL={server.api_url}; Ctrl-C stops it)", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
