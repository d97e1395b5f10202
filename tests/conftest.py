"""Shared fixtures: real media from ../shared/data, a real S3 endpoint (moto server on 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Test credentials for the local endpoint only; real ones always come from the environment.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "resync-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "resync-test-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Dubs in tests are a few seconds long: compiling the generator (seconds to a minute) would dominate
# them. tests/models/test_resyncer.py checks the compiled generator against the eager one.
os.environ.setdefault("RESYNC_COMPILE_GENERATOR", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"test media folder {SHARED_DATA} is absent (it sits beside the repo as ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """A real HTTP S3 endpoint on loopback for the whole session.

    The server runs in its own process: deltalake's Rust client holds the GIL while it waits,
    so an in-process (threaded) moto server would deadlock against it.
    """
    from infra.dev.s3_server import start_s3_server

    server = start_s3_server(log_path=tmp_path_factory.mktemp("moto") / "moto.log")
    yield server.endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket per test, created over HTTP."""
    import s3fs

    name = f"resync-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    fs.mkdir(name)
    return name


@pytest.fixture
def local_settings(tmp_path: Path, shared_data_or_none):
    from catalogs.settings import Settings

    roots = [str(tmp_path)] + ([str(shared_data_or_none)] if shared_data_or_none else [])
    return Settings(root=str(tmp_path / "root"), allowed_roots=roots)


@pytest.fixture(scope="session")
def shared_data_or_none() -> Path | None:
    return SHARED_DATA if SHARED_DATA.is_dir() else None


@pytest.fixture
def s3_settings(s3_endpoint: str, s3_bucket: str, shared_data_or_none, tmp_path: Path):
    from catalogs.settings import Settings

    roots = [f"s3://{s3_bucket}/media", str(tmp_path)] + ([str(shared_data_or_none)] if shared_data_or_none else [])
    return Settings(root=f"s3://{s3_bucket}/root", allowed_roots=roots, s3_endpoint_url=s3_endpoint)


@pytest.fixture(params=["local", "s3"])
def settings(request):
    """The same test on local disk and on the S3 endpoint."""
    return request.getfixturevalue(f"{request.param}_settings")


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if not path:
        pytest.fail("ffmpeg is not installed: `make test` installs it (infra/bootstrap.sh)")
    return path


def run_ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-y", "-v", "error", *args], check=True)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 256 KiB filesystem (tmpfs) that fills up: writes past it fail with ENOSPC, as on a
    full disk. Mounting needs root; elsewhere the test is skipped with that reason."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
