"""A local S3 endpoint (moto server) on 127.0.0.1, for development and tests.

Run ``python -m infra.dev.s3_server --port 9000`` and point resync at it with
``RESYNC_S3_ENDPOINT_URL=http://127.0.0.1:9000`` (any AWS_ACCESS_KEY_ID/SECRET work).
It runs as a separate process: deltalake's client blocks the Python thread that calls it, so an
in-process server would deadlock.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    process: subprocess.Popen
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_s3_server(port: int | None = None, log_path: Path | None = None, timeout: float = 30.0) -> S3Server:
    """Start moto's HTTP server bound to loopback and wait until it answers."""
    port = port or free_port()
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://{HOST}:{port}/moto-api/", timeout=1).close()
            return S3Server(proc, port)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto server did not answer on {HOST}:{port} within {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=9000, help="port on 127.0.0.1 (default 9000)")
    args = ap.parse_args()
    server = start_s3_server(args.port)
    print(f"S3 endpoint: {server.endpoint} (Ctrl-C stops it)", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
