"""What the development servers share: a free loopback port, a child process, waiting until it
answers, stopping it."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass

HOST = "127.0.0.1"


def free_port(port: int = 0) -> int:
    """``port`` if nothing listens on it (0: any free port); OSError if something does.

    Checked before starting, or a server already on the port would pass the health check for ours.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    process: subprocess.Popen
    port: int

    def stop(self, timeout: float = 15) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def run_until_interrupted(self) -> None:
        """Foreground mode for developers: wait for the server, stop it on Ctrl-C."""
        try:
            self.process.wait()
        except KeyboardInterrupt:
            self.stop()

    def wait_until_up(self, url: str, name: str, timeout: float) -> None:
        """Poll ``url`` until it answers; stop the process and raise if it dies or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {self.process.returncode}")
            try:
                urllib.request.urlopen(url, timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{name} did not answer on {HOST}:{self.port} within {timeout} s")
