"""A local S3 endpoint (moto server) on 127.0.0.1, for development and tests.

Run ``python -m infra.dev.s3_server --port 9000`` and point resync at it with
``RESYNC_S3_ENDPOINT_URL=http://127.0.0.1:9000`` (any AWS_ACCESS_KEY_ID/SECRET work).
It runs as a separate process: deltalake's client blocks the Python thread that calls it, so an
in-process server would deadlock.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from infra.dev.local_service import HOST, LocalServer, free_port


class S3Server(LocalServer):
    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"


def start_s3_server(port: int | None = None, log_path: Path | None = None, timeout: float = 30.0) -> S3Server:
    """Start moto's HTTP server bound to loopback and wait until it answers."""
    port = free_port(port or 0)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    server = S3Server(proc, port)
    server.wait_until_up(f"{server.endpoint}/moto-api/", "moto server", timeout)
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=9000, help="port on 127.0.0.1 (default 9000)")
    args = ap.parse_args()
    server = start_s3_server(args.port)
    print(f"S3 endpoint: {server.endpoint} (Ctrl-C stops it)", flush=True)
    server.run_until_interrupted()


if __name__ == "__main__":
    main()
