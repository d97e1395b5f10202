import logging
import os
from pathlib import Path

import pytest

from catalogs.errors import ErrorClass, ResyncError
from catalogs.settings import Settings
from catalogs.storage import Storage


def test_write_read_and_hash_on_both_backends(settings):
    st = Storage(settings)
    uri = st.uri("artifacts", "x.bin")
    st.write_bytes(uri, b"hello" * 1000)
    assert st.exists(uri) and st.size(uri) == 5000
    assert st.read_bytes(uri) == b"hello" * 1000
    import hashlib
    assert st.sha256(uri) == hashlib.sha256(b"hello" * 1000).hexdigest()
    st.write_bytes(uri, b"new")
    assert st.read_bytes(uri) == b"new"


def test_local_write_is_atomic_when_the_writer_fails(tmp_path: Path):
    st = Storage(Settings(root=str(tmp_path)))
    uri = st.uri("out.mp4")
    st.write_bytes(uri, b"complete old version")

    def failing(f):
        f.write(b"half of the new vers")
        raise OSError("disk full")

    with pytest.raises(ResyncError) as e:
        st._atomic_local(uri, failing)
    assert e.value.error_class == ErrorClass.STORAGE_ERROR
    assert Path(uri).read_bytes() == b"complete old version"
    assert os.listdir(tmp_path) == ["out.mp4"]  # no temporary left behind


def test_put_file_publishes_whole_file(settings, tmp_path: Path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    st = Storage(settings)
    uri = st.uri("outputs", "fr", "v", "k.mp4")
    st.put_file(src, uri)
    assert st.read_bytes(uri) == src.read_bytes()


def test_delta_options_from_settings_and_secrets_stay_secret(caplog):
    s = Settings(root="s3://b/p", s3_endpoint_url="http://127.0.0.1:9", aws_access_key_id="AKIDEXAMPLE",
                 aws_secret_access_key="very-secret-value")
    opts = Storage(s).delta_options()
    assert opts["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and opts["AWS_ALLOW_HTTP"] == "true"
    assert opts["conditional_put"] == "etag" and opts["AWS_SECRET_ACCESS_KEY"] == "very-secret-value"
    assert Storage(Settings(root="/tmp/x")).delta_options() is None
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("t").info("settings %s %r %s", s, s, s.model_dump())
    assert "very-secret-value" not in caplog.text


def test_unreachable_endpoint_is_a_storage_error():
    s = Settings(root="s3://b/p", s3_endpoint_url="http://127.0.0.1:9", aws_access_key_id="a", aws_secret_access_key="b",
                 s3_retries=1)
    st = Storage(s)
    with pytest.raises(ResyncError) as e:
        st.read_bytes("s3://b/p/x")
    assert e.value.error_class == ErrorClass.STORAGE_ERROR and "s3://b/p/x" in str(e.value)


def test_unreachable_endpoint_is_a_storage_error_for_tables_too():
    """deltalake raises an object store failure as a plain OSError (internal, if an item met it);
    DeltaTables makes it storage_error naming the table, once s3_retry_timeout_s has passed."""
    import time

    from catalogs.delta import DeltaTables

    s = Settings(root="s3://b/p", s3_endpoint_url="http://127.0.0.1:9", aws_access_key_id="a", aws_secret_access_key="b",
                 s3_retry_timeout_s=1.5)
    assert Storage(s).delta_options()["retry_timeout"] == "1500ms"
    tables = DeltaTables(Storage(s))
    for call in (lambda: tables.read("manifests/dubs"), lambda: tables.exists("manifests/dubs")):
        started = time.monotonic()
        with pytest.raises(ResyncError) as e:
            call()
        assert e.value.error_class == ErrorClass.STORAGE_ERROR and e.value.item == "s3://b/p/manifests/dubs"
        assert 1.0 < time.monotonic() - started < 15, "retries are bounded by s3_retry_timeout_s"


@pytest.mark.s3
def test_a_read_cut_off_midway_is_a_storage_error(s3_endpoint: str, s3_bucket: str):
    """A decoder pulls bytes from an opened file long after open() returned; the endpoint going away
    by then (a real cut, tests/tcp_proxy.py) is storage_error naming the file, not a bare network
    error that an item would record as internal and an ingest as a bad row."""
    from urllib.parse import urlparse

    from tests.tcp_proxy import CuttableProxy

    proxy = CuttableProxy(urlparse(s3_endpoint).port)
    try:
        st = Storage(Settings(root=f"s3://{s3_bucket}/root", s3_endpoint_url=proxy.endpoint, s3_retries=0))
        uri = st.uri("big.bin")
        st.write_bytes(uri, os.urandom(64 << 20))        # beyond what s3fs reads ahead (50 MiB)
        with st.open(uri) as f:
            assert len(f.read(1 << 20)) == 1 << 20
            proxy.cut()
            with pytest.raises(ResyncError) as e:
                f.read()
        assert e.value.error_class == ErrorClass.STORAGE_ERROR and e.value.item == uri
    finally:
        proxy.stop()


def test_a_full_local_disk_is_a_storage_error(tiny_disk: Path):
    """ENOSPC while publishing is the storage failing (storage_error, naming the URI), not a bug;
    nothing half-written is left behind."""
    st = Storage(Settings(root=str(tiny_disk / "root")))
    uri = st.uri("outputs", "fr", "v", "key.mp4")
    with pytest.raises(ResyncError) as e:
        st.write_bytes(uri, os.urandom(1 << 20))
    assert e.value.error_class == ErrorClass.STORAGE_ERROR and e.value.item == uri
    assert "No space left" in e.value.reason
    big = tiny_disk.parent / "big.bin"
    big.write_bytes(os.urandom(1 << 20))
    with pytest.raises(ResyncError) as e:
        st.put_file(big, uri)
    assert e.value.error_class == ErrorClass.STORAGE_ERROR
    assert list(Path(uri).parent.iterdir()) == []


def test_errors_of_a_full_disk_are_storage_errors():
    """What the item workers record for an OSError: a full disk (a write to /dev/full fails with
    ENOSPC for real) is storage_error; other failures stay internal."""
    from catalogs.errors import classify

    with pytest.raises(OSError) as e:
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 10)
    assert classify(e.value) == ErrorClass.STORAGE_ERROR
    assert classify(ValueError("bug")) == ErrorClass.INTERNAL
    assert classify(ResyncError(ErrorClass.NO_FACE, "none")) == ErrorClass.NO_FACE
