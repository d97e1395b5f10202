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
import subprocess
import sys
from pathlib import Path

from infra.dev.local_service import HOST, LocalServer, free_port

REPO = Path(__file__).resolve().parents[2]


class PrefectServer(LocalServer):
    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"


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
    server.wait_until_up(f"{server.api_url}/health", "prefect server", timeout)
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=4200, help="port on 127.0.0.1 (default 4200)")
    ap.add_argument("--home", type=Path, default=REPO / ".work" / "prefect",
                    help="PREFECT_HOME: database and settings (default .work/prefect in the checkout)")
    args = ap.parse_args()
    server = start_prefect_server(args.port, home=args.home)
    print(f"Prefect API: {server.api_url}  (export PREFECT_API_URL={server.api_url}; Ctrl-C stops it)", flush=True)
    server.run_until_interrupted()


if __name__ == "__main__":
    main()
