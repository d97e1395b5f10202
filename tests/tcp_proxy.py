"""A TCP forwarder on 127.0.0.1 that a test can cut, so that a real endpoint goes away for real.

While cut, the port refuses connections (nothing listens on it) and every open connection is reset
(RST), as when a storage endpoint's host goes down; restoring listens on the same port again. It
runs in its own process: deltalake's Rust client holds the GIL of a process that calls it, which
would stall forwarding threads of the test's own process.

Control: SIGUSR1 cuts, SIGUSR2 restores, SIGHUP asks how many connections were accepted so far;
each is answered on stdout (``listening PORT``, ``cut N`` with N the connections reset,
``restored``, ``connections N``). ``--cut-after N`` cuts by itself as the Nth connection arrives
(that one is reset too), to cut an operation of a known number of requests in its middle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        with contextlib.suppress(ConnectionError, OSError):   # either side going away ends the pipe
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
    finally:
        if not writer.is_closing():
            writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: the peer sees 'connection reset', not a clean end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):   # a socket already closed needs no RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def serve(target_port: int, port: int, cut_after: int | None = None) -> None:
    live: set[asyncio.StreamWriter] = set()
    accepted = 0

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        if accepted == cut_after:
            live.add(client_w)
            cut()
            return
        try:
            up_r, up_w = await asyncio.open_connection(HOST, target_port)
        except OSError:
            _reset(client_w)
            return
        live.update((client_w, up_w))
        try:
            await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
        finally:
            live.discard(client_w)
            live.discard(up_w)

    server = await asyncio.start_server(handle, HOST, port, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    loop = asyncio.get_running_loop()
    state = {"server": server}

    def cut() -> None:
        if state["server"] is None:
            return
        state["server"].close()           # stop listening: new connections are refused
        state["server"] = None
        n = len(live)
        for w in list(live):
            _reset(w)
        live.clear()
        print(f"cut {n}", flush=True)

    async def restore() -> None:
        if state["server"] is None:
            state["server"] = await asyncio.start_server(handle, HOST, port, reuse_address=True)
        print("restored", flush=True)

    loop.add_signal_handler(signal.SIGUSR1, cut)
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(restore()))
    loop.add_signal_handler(signal.SIGHUP, lambda: print(f"connections {accepted}", flush=True))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


class CuttableProxy:
    """The forwarder as a child process, driven from a test."""

    def __init__(self, target_port: int, cut_after: int | None = None) -> None:
        extra = ["--cut-after", str(cut_after)] if cut_after else []
        self.process = subprocess.Popen([sys.executable, "-m", "tests.tcp_proxy", str(target_port), *extra], cwd=REPO,
                                        stdout=subprocess.PIPE, text=True)
        line = self._expect("listening")
        self.port = int(line.split()[1])
        self.endpoint = f"http://{HOST}:{self.port}"
        self.cuts: list[tuple[float, float]] = []       # (monotonic start, end) of each cut

    def _expect(self, word: str, timeout: float = 10.0) -> str:
        if not select.select([self.process.stdout], [], [], timeout)[0]:
            raise TimeoutError(f"tcp proxy said nothing within {timeout} s, expected {word!r}")
        line = self.process.stdout.readline()
        if not line.startswith(word):
            raise RuntimeError(f"tcp proxy said {line!r}, expected {word!r} (exit code {self.process.poll()})")
        return line

    def cut(self) -> int:
        """Refuse and reset everything from now on; returns how many open connections were reset."""
        self.process.send_signal(signal.SIGUSR1)
        n = int(self._expect("cut").split()[1])
        self.cuts.append((time.monotonic(), float("nan")))
        return n

    def wait_for_cut(self, timeout: float) -> None:
        """Wait until the proxy has cut by itself (``cut_after``)."""
        self._expect("cut", timeout)
        self.cuts.append((time.monotonic(), float("nan")))

    def connections(self) -> int:
        """Connections accepted so far (an S3 client without keep-alive: about one per request)."""
        self.process.send_signal(signal.SIGHUP)
        return int(self._expect("connections").split()[1])

    def restore(self) -> None:
        self.process.send_signal(signal.SIGUSR2)
        self._expect("restored")
        self.cuts[-1] = (self.cuts[-1][0], time.monotonic())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target_port", type=int, help="port on 127.0.0.1 to forward to")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")
    ap.add_argument("--cut-after", type=int, default=None, help="cut by itself as this connection (1-based) arrives")
    args = ap.parse_args()
    asyncio.run(serve(args.target_port, args.port, args.cut_after))


if __name__ == "__main__":
    main()
