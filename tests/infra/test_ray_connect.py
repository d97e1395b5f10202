"""Which token joining a Ray cluster sends, found in Ray's own order, and how addresses are read.

No cluster here (tests/flows/test_ray_cluster.py joins a real one); these are the decisions made
before any connection, each in a fresh HOME so that a developer's ~/.ray/auth_token never counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from catalogs.settings import Settings
from infra.ray_connect import ClusterConnectionError, client_host_port, find_token


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RESYNC_RAY_AUTH_TOKEN",
                 "RESYNC_RAY_AUTH_TOKEN_PATH", "RESYNC_RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_token_precedence_is_rays(home: Path, monkeypatch):
    assert find_token(Settings()) == (None, "none found")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("from-default-file\n")
    assert find_token(Settings()) == ("from-default-file", str(home / ".ray" / "auth_token"))
    (home / "named").write_text("from-named-file")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "named"))
    assert find_token(Settings()) == ("from-named-file", f"RAY_AUTH_TOKEN_PATH={home / 'named'}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert find_token(Settings()) == ("from-env", "RAY_AUTH_TOKEN")


def test_a_named_token_file_that_cannot_be_read_is_an_error_not_no_token(home: Path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "missing"))
    with pytest.raises(ClusterConnectionError, match="cannot read the Ray token file"):
        find_token(Settings())
    (home / "empty").write_text("\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "empty"))
    with pytest.raises(ClusterConnectionError, match="is empty"):
        find_token(Settings())


def test_the_token_stays_out_of_reprs_dumps_and_the_actors_settings(home: Path, monkeypatch):
    from infra.ray_pools import worker_settings

    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cr3t-token")
    s = Settings(ray_address="ray://head:10001")
    assert "s3cr3t-token" not in repr(s) and "s3cr3t-token" not in str(s.model_dump())
    assert "ray_auth_token" not in worker_settings(s)


def test_auth_mode_reads_rays_variable_case_insensitively(home: Path, monkeypatch):
    assert Settings().ray_auth_mode == "auto"
    monkeypatch.setenv("RAY_AUTH_MODE", "TOKEN")
    assert Settings().ray_auth_mode == "token"
    monkeypatch.setenv("RESYNC_RAY_AUTH_MODE", "disabled")
    assert Settings().ray_auth_mode == "disabled"


def test_client_addresses():
    assert client_host_port("ray://10.0.0.5:10001") == ("10.0.0.5", 10001)
    assert client_host_port("ray://resync-head-svc") == ("resync-head-svc", 10001)
    assert client_host_port("10.0.0.5:6379") is None and client_host_port("auto") is None
    with pytest.raises(ClusterConnectionError, match="names no host"):
        client_host_port("ray://:10001")


SERVER_DIED = ("Initialization failure from server:\nTraceback (most recent call last):\n  File \"proxier.py\", line 772, "
               "in Datapath\n    raise RuntimeError(\nRuntimeError: Starting Ray client server failed. See "
               "ray_client_server_23000.err for detailed logs.\n")


@pytest.mark.parametrize("failures, error, calls, joins", [
    (2, SERVER_DIED, 3, True),                      # the head's per-client server died twice, then started
    (3, SERVER_DIED, 3, False),                     # every try: the last error is raised, naming the address
    (1, "ray client connection timeout", 1, False),  # anything else is not retried
])
def test_join_tries_again_only_when_the_heads_client_server_died_starting(home: Path, monkeypatch, failures: int,
                                                                          error: str, calls: int, joins: bool):
    # The proxier's per-client server dying as it starts cannot be caused on demand (CI saw it once in
    # many runs), so ray.init is the fake here: it fails as the real one did, `failures` times.
    import ray

    from infra import ray_connect

    seen: list[str] = []

    def init(address: str, **kwargs) -> None:
        seen.append(address)
        if len(seen) <= failures:
            raise ConnectionError(error)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray_connect, "check_cluster", lambda settings: None)
    settings = Settings(ray_address="ray://127.0.0.1:25507", ray_connect_attempts=3)
    if joins:
        ray_connect.join(settings)
    else:
        with pytest.raises(ClusterConnectionError, match="joining Ray cluster ray://127.0.0.1:25507 failed"):
            ray_connect.join(settings)
    assert len(seen) == calls
