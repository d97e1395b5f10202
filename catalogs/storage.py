"""One storage abstraction over a root URI: a local directory or ``s3://bucket/prefix``.

Media and small files go through fsspec (s3fs for S3); Delta tables go through deltalake with
storage options derived from the same settings, so one set of credentials serves both. Writes are
atomic from a reader's view: a temporary name then ``os.replace`` on local disk, a single object
PUT (or a completed multipart upload) on S3.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from pathlib import Path
from typing import IO, Iterator
from urllib.parse import urlparse

import fsspec
from botocore.exceptions import BotoCoreError
from fsspec.implementations.local import LocalFileSystem

from catalogs.errors import ErrorClass, ResyncError
from catalogs.settings import Settings

HASH_CHUNK = 8 << 20


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def normalize_uri(uri: str) -> str:
    """Absolute local path for local URIs (``file://`` stripped); ``s3://`` URIs untouched."""
    if is_s3(uri):
        return uri.rstrip("/")
    if uri.startswith("file://"):
        uri = urlparse(uri).path
    return str(Path(uri).expanduser().resolve())


def join_uri(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


class Storage:
    """Files and Delta tables under one root, local or S3."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = normalize_uri(settings.root)
        self._s3: fsspec.AbstractFileSystem | None = None
        self._local = LocalFileSystem()

    # --- addressing ----------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        """URI of a path below the root."""
        return join_uri(self.root, *parts)

    def table_uri(self, name: str) -> str:
        """URI of a Delta table below the root (e.g. ``manifests/dubs``)."""
        return self.uri(name)

    def fs_for(self, uri: str) -> fsspec.AbstractFileSystem:
        """The filesystem that serves ``uri`` (local or the configured S3 endpoint)."""
        if is_s3(uri):
            if self._s3 is None:
                self._s3 = self._make_s3()
            return self._s3
        return self._local

    def _make_s3(self) -> fsspec.AbstractFileSystem:
        s = self.settings
        kwargs: dict = {"skip_instance_cache": True, "use_listings_cache": False,
                        "config_kwargs": {"retries": {"max_attempts": s.s3_retries + 1, "mode": "standard"}},
                        "client_kwargs": {"region_name": s.s3_region}}
        if s.s3_endpoint_url:
            kwargs["endpoint_url"] = s.s3_endpoint_url
        if s.aws_access_key_id and s.aws_secret_access_key:
            kwargs["key"] = s.aws_access_key_id.get_secret_value()
            kwargs["secret"] = s.aws_secret_access_key.get_secret_value()
        if s.aws_session_token:
            kwargs["token"] = s.aws_session_token.get_secret_value()
        fs = fsspec.filesystem("s3", **kwargs)
        fs.retries = max(1, s.s3_retries)  # s3fs's own retry loop, on top of botocore's
        return fs

    def delta_options(self, uri: str | None = None) -> dict[str, str] | None:
        """deltalake storage options for ``uri`` (default: the root); None for local tables."""
        if not is_s3(uri or self.root):
            return None
        s = self.settings
        # Retries bounded by time, not count: object_store's jittered backoff spends its default 10
        # retries within seconds when the endpoint refuses connections.
        opts = {"AWS_REGION": s.s3_region, "conditional_put": "etag", "max_retries": "1000000",
                "retry_timeout": f"{max(1, round(s.s3_retry_timeout_s * 1000))}ms",
                "backoff_config.init_backoff": "100ms", "backoff_config.max_backoff": "5s", "backoff_config.base": "2"}
        if s.s3_endpoint_url:
            opts["AWS_ENDPOINT_URL"] = s.s3_endpoint_url
            if s.s3_endpoint_url.startswith("http://"):
                opts["AWS_ALLOW_HTTP"] = "true"
        if s.aws_access_key_id and s.aws_secret_access_key:
            opts["AWS_ACCESS_KEY_ID"] = s.aws_access_key_id.get_secret_value()
            opts["AWS_SECRET_ACCESS_KEY"] = s.aws_secret_access_key.get_secret_value()
        if s.aws_session_token:
            opts["AWS_SESSION_TOKEN"] = s.aws_session_token.get_secret_value()
        return opts

    # --- files ---------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        return self._guard(uri, lambda fs, p: fs.exists(p))

    def size(self, uri: str) -> int:
        return self._guard(uri, lambda fs, p: int(fs.size(p)))

    def modified(self, uri: str) -> float | None:
        """Modification time as a POSIX timestamp, when the backend knows it."""
        def get(fs: fsspec.AbstractFileSystem, p: str) -> float | None:
            info = fs.info(p)
            m = info.get("mtime") or info.get("LastModified")
            return m.timestamp() if hasattr(m, "timestamp") else (float(m) if m is not None else None)
        return self._guard(uri, get)

    def open(self, uri: str, mode: str = "rb") -> IO[bytes]:
        """A file object whose reads and writes fail as ``storage_error`` too: a decoder pulls the
        bytes long after ``open`` returned, and an endpoint gone by then is still not the file's fault."""
        return GuardedFile(self._guard(uri, lambda fs, p: fs.open(p, mode)), uri, self)

    def read_bytes(self, uri: str) -> bytes:
        return self._guard(uri, lambda fs, p: fs.cat_file(p))

    def sha256(self, uri: str) -> str:
        """Streaming sha256 of a file, never holding it whole in memory."""
        h = hashlib.sha256()
        with self.open(uri) as f:
            for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
                h.update(chunk)
        return h.hexdigest()

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Publish ``data`` at ``uri`` atomically: readers see the old state or all of it."""
        if is_s3(uri):
            self._guard(uri, lambda fs, p: fs.pipe_file(p, data))
            return
        self._atomic_local(uri, lambda f: f.write(data))

    def put_file(self, local_path: str | os.PathLike, uri: str) -> None:
        """Publish a finished local file at ``uri`` atomically."""
        if is_s3(uri):
            self._guard(uri, lambda fs, p: fs.put_file(str(local_path), p))
            return

        def copy(f: IO[bytes]) -> None:
            with open(local_path, "rb") as src:
                for chunk in iter(lambda: src.read(HASH_CHUNK), b""):
                    f.write(chunk)
        self._atomic_local(uri, copy)

    def list(self, uri: str) -> Iterator[str]:
        return iter(self._guard(uri, lambda fs, p: fs.ls(p, detail=False)))

    @staticmethod
    def _atomic_local(uri: str, write) -> None:
        """Write through a temporary name, then rename; a failing disk (full, read-only...) is a
        ``storage_error`` naming the URI, like any other backend failure."""
        path = Path(uri)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            if isinstance(e, FileNotFoundError) and e.filename != str(tmp):
                raise                      # the source of a copy is missing: not the storage's fault
            raise ResyncError(ErrorClass.STORAGE_ERROR, f"{type(e).__name__}: {e}", item=uri) from e
        finally:
            tmp.unlink(missing_ok=True)

    def _guard(self, uri: str, op):
        """Run a filesystem call; backend failures become ``storage_error`` naming the URI."""
        fs = self.fs_for(uri)
        path = uri if is_s3(uri) else normalize_uri(uri)
        try:
            return op(fs, path)
        except FileNotFoundError:
            raise
        except (PermissionError, OSError, RuntimeError, BotoCoreError) as e:
            raise ResyncError(ErrorClass.STORAGE_ERROR, f"{type(e).__name__}: {e}", item=uri) from e


class GuardedFile:
    """A storage file whose I/O errors are ``storage_error`` naming its URI (``Storage._guard``);
    everything else is the wrapped file's own."""

    def __init__(self, f: IO[bytes], uri: str, storage: Storage) -> None:
        self._f, self._uri, self._storage = f, uri, storage

    def _call(self, method: str, *args):
        return self._storage._guard(self._uri, lambda _fs, _p: getattr(self._f, method)(*args))

    def read(self, *args) -> bytes:
        return self._call("read", *args)

    def readinto(self, b) -> int:
        return self._call("readinto", b)

    def seek(self, *args) -> int:
        return self._call("seek", *args)

    def write(self, data) -> int:
        return self._call("write", data)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self) -> "GuardedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def s3_key_is_clean(uri: str) -> bool:
    """S3 keys are literal: a ``..`` or ``.`` segment is a traversal attempt, not a path."""
    key = uri[len("s3://"):]
    return not any(seg in ("..", ".") for seg in key.split("/")) and posixpath.normpath(key) == key.rstrip("/")
