"""Joining an existing Ray cluster (``Settings.ray_address``), token authentication included.

Why this exists: Ray 2.60's ``ray start --head`` turns token authentication on whenever a token
exists (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), but a Ray Client
sends one only when ``RAY_AUTH_MODE=token`` is set in its own environment. Without it the server
rejects every call and ``ray.init("ray://...")`` retries for about 50 s before saying only "ray
client connection timeout". So the mode is decided here (``Settings.ray_auth_mode``, default auto:
token whenever one is found) and handed to Ray in-process, and the address is checked first with
one Ray Client ping under ``ray_connect_timeout_s``, so that an unreachable address or a rejected
token fails in seconds with its cause. The token itself is never logged nor put in a message.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from catalogs.settings import Settings

log = logging.getLogger(__name__)

CLIENT_SCHEME = "ray://"
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")


# What the head's Ray Client proxier answers when the per-client server it forked for this driver
# died as it started. That is transient (its gRPC fork handlers; a fresh try gets a fresh process),
# so join tries again; GRPC_ENABLE_FORK_SUPPORT=0 in the head's environment removes most of it.
SERVER_START_FAILED = "Starting Ray client server failed"


class ClusterConnectionError(ConnectionError):
    """The configured Ray cluster cannot be joined; the message says why and what to check."""


def client_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray Client address (``ray://host:port``, port 10001 when left out);
    None for other addresses (a GCS ``host:6379`` or ``auto`` joined as a driver on a node)."""
    if not address.startswith(CLIENT_SCHEME):
        return None
    parts = urlsplit(address)
    if not parts.hostname:
        raise ClusterConnectionError(f"Ray address {address!r} names no host")
    return parts.hostname, parts.port or 10001


def find_token(settings: Settings) -> tuple[str | None, str]:
    """The cluster token and where it came from, in Ray's own order of precedence: RAY_AUTH_TOKEN,
    the file RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token. A named file that cannot be read is an
    error (as in Ray), not a silent fall-back to no token."""
    if settings.ray_auth_token and settings.ray_auth_token.get_secret_value().strip():
        return settings.ray_auth_token.get_secret_value().strip(), "RAY_AUTH_TOKEN"
    if settings.ray_auth_token_path:
        path = Path(settings.ray_auth_token_path).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ClusterConnectionError(f"cannot read the Ray token file {path} (RAY_AUTH_TOKEN_PATH): {e.strerror}") from e
        if not token:
            raise ClusterConnectionError(f"the Ray token file {path} (RAY_AUTH_TOKEN_PATH) is empty")
        return token, f"RAY_AUTH_TOKEN_PATH={path}"
    path = DEFAULT_TOKEN_PATH.expanduser()
    try:
        token = path.read_text().strip()
    except OSError:
        return None, "none found"
    return (token, str(path)) if token else (None, "none found")


def configure_auth(settings: Settings) -> tuple[str, str]:
    """Decide the auth mode for joining ``ray_address`` and hand it (and the token) to Ray in this
    process; returns (mode, where the token came from). Must run before ``ray.init``."""
    token, source = find_token(settings)
    mode = settings.ray_auth_mode
    if mode == "auto":
        mode = "token" if token else "disabled"
    if mode == "token" and not token:
        raise ClusterConnectionError(
            "Ray token authentication is on (RAY_AUTH_MODE=token) but no token was found: set RAY_AUTH_TOKEN, "
            f"or RAY_AUTH_TOKEN_PATH to a file holding it, or put it in {DEFAULT_TOKEN_PATH}")
    os.environ["RAY_AUTH_MODE"] = mode
    if mode == "token":
        # Ray's token loader reads these variables itself, in this order: leave it exactly the
        # source chosen here (a Settings value may differ from the environment; a blank
        # RAY_AUTH_TOKEN would shadow the file).
        if source == "RAY_AUTH_TOKEN":
            os.environ["RAY_AUTH_TOKEN"] = token
        else:
            os.environ.pop("RAY_AUTH_TOKEN", None)
            if source.startswith("RAY_AUTH_TOKEN_PATH="):
                os.environ["RAY_AUTH_TOKEN_PATH"] = source.split("=", 1)[1]
            else:
                os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")                              # re-read RAY_AUTH_MODE (Ray caches it)
    AuthenticationTokenLoader.instance().reset_cache()  # and the token
    log.info("joining Ray at %s with token authentication %s (token: %s)", settings.ray_address,
             "on" if mode == "token" else "off", source if mode == "token" else "not sent")
    return mode, source


def check_client_server(address: str, mode: str, source: str, timeout: float) -> None:
    """Fail within ``timeout`` seconds, naming the cause, unless a Ray Client server at ``address``
    answers a ping with this process's credentials. Call after :func:`configure_auth`."""
    import grpc
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

    host, port = client_host_port(address) or ("", 0)
    deadline = time.monotonic() + timeout
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror as e:
        raise ClusterConnectionError(f"Ray cluster {address} is unreachable: cannot resolve {host!r} ({e.strerror})") from e
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise ClusterConnectionError(f"Ray cluster {address} is unreachable: connecting to {host}:{port} {why} "
                                     "(is the head's Ray Client server, `ray start --ray-client-server-port`, "
                                     "listening there?)") from e
    channel = init_grpc_channel(f"{host}:{port}", asynchronous=False)
    try:
        stub = ray_client_pb2_grpc.RayletDriverStub(channel)
        request = ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING)
        try:
            stub.ClusterInfo(request, timeout=max(deadline - time.monotonic(), 0.5),
                             metadata=[("client_id", "resync-connect-check")])
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                if mode == "token":
                    raise ClusterConnectionError(
                        f"Ray cluster {address} rejected this client's token (from {source}): it is not the "
                        "cluster's token (`ray get-auth-token` on the head prints it)") from None
                if source != "none found":
                    raise ClusterConnectionError(
                        f"Ray cluster {address} requires token authentication, which RAY_AUTH_MODE=disabled turned "
                        f"off here although a token was found ({source}): unset RAY_AUTH_MODE or set it to token") from None
                raise ClusterConnectionError(
                    f"Ray cluster {address} requires token authentication and no token was found here: set "
                    f"RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it, or put it in {DEFAULT_TOKEN_PATH}") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ClusterConnectionError(f"Ray cluster {address} did not answer within {timeout:g} s "
                                             "(is that port the head's Ray Client server?)") from None
            raise ClusterConnectionError(f"Ray cluster {address} is not answering as a Ray Client server: "
                                         f"{code.name}: {e.details()}") from None
    finally:
        channel.close()


def check_cluster(settings: Settings) -> None:
    """Configure auth and, for a Ray Client address, ping it: the quick check the CLI runs before a
    flow starts, and :func:`join` before ``ray.init``."""
    mode, source = configure_auth(settings)
    if client_host_port(settings.ray_address or ""):
        check_client_server(settings.ray_address, mode, source, settings.ray_connect_timeout_s)


def join(settings: Settings) -> None:
    """``ray.init`` against ``settings.ray_address`` after :func:`check_cluster`; a failure raises
    :class:`ClusterConnectionError` naming the address."""
    import ray

    check_cluster(settings)
    for attempt in range(1, settings.ray_connect_attempts + 1):
        try:
            ray.init(address=settings.ray_address, namespace="resync", logging_level=logging.WARNING)
            return
        except ConnectionError as e:
            if SERVER_START_FAILED not in str(e) or attempt == settings.ray_connect_attempts:
                raise ClusterConnectionError(f"joining Ray cluster {settings.ray_address} failed: {e}") from e
            log.warning("Ray cluster %s could not start a client server for this run (try %d of %d), trying again; "
                        "if it keeps happening, start the head with GRPC_ENABLE_FORK_SUPPORT=0", settings.ray_address,
                        attempt, settings.ray_connect_attempts)
