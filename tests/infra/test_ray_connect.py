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
