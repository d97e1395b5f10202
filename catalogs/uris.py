"""Confinement of catalog URIs to configured roots.

A catalog listing is user input: a row may name ``../../etc/passwd``, a ``file://`` path elsewhere,
or a scheme we do not serve. Every URI from a listing goes through :class:`UriPolicy` before any
byte is read; a rejection is a ``uri_not_allowed`` error naming the URI and the reason.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import urlparse

from catalogs.errors import ErrorClass, ResyncError
from catalogs.storage import is_s3, s3_key_is_clean

ALLOWED_SCHEMES = ("", "file", "s3")


def listing_dir(listing: str) -> str:
    """The folder a listing's relative URIs are taken from: its own (an S3 prefix for an S3 listing)."""
    if is_s3(listing):
        return listing.rstrip("/").rsplit("/", 1)[0]
    return str(Path(urlparse(listing).path if listing.startswith("file://") else listing).expanduser().resolve().parent)


def join_relative(base_dir: str, uri: str) -> str:
    """``uri`` as named by a listing in ``base_dir``: relative paths are joined to it (``..`` folded
    away); absolute paths and URIs with a scheme are left as they are. An S3 join may not climb out of
    the listing's bucket."""
    if urlparse(uri).scheme or uri.startswith(("/", "~")):
        return uri
    if not is_s3(base_dir):
        return str(Path(base_dir) / uri)
    bucket, _, prefix = base_dir[len("s3://"):].partition("/")
    key = posixpath.normpath(posixpath.join(prefix, uri))
    if key == "." or key.startswith("../") or key == "..":
        raise ResyncError(ErrorClass.URI_NOT_ALLOWED, f"climbs out of the listing's bucket s3://{bucket}", item=uri)
    return f"s3://{bucket}/{key}"


class UriPolicy:
    """Resolves listing URIs and rejects any that land outside the allowed roots."""

    def __init__(self, allowed_roots: list[str]) -> None:
        self.local_roots: list[Path] = []
        self.s3_roots: list[str] = []
        for root in allowed_roots:
            if is_s3(root):
                self.s3_roots.append(root.rstrip("/") + "/")
            else:
                self.local_roots.append(Path(urlparse(root).path if root.startswith("file://") else root).expanduser().resolve())

    def resolve(self, uri: str, base_dir: str | Path | None = None) -> str:
        """Absolute URI for ``uri`` (relative paths are taken from ``base_dir``, a local folder or an S3
        prefix), or ``ResyncError``."""
        if not isinstance(uri, str) or not uri.strip():
            raise ResyncError(ErrorClass.INVALID_ROW, "empty URI")
        uri = uri.strip()
        if base_dir is not None and is_s3(str(base_dir)):
            uri = join_relative(str(base_dir), uri)   # relative to an S3 listing: an S3 URI
        scheme = urlparse(uri).scheme
        # A Windows-style drive letter is parsed as a one-letter scheme; we serve POSIX paths only.
        if scheme not in ALLOWED_SCHEMES:
            raise ResyncError(ErrorClass.URI_NOT_ALLOWED, f"scheme {scheme!r} is not served (use a path, file:// or s3://)", item=uri)
        if scheme == "s3":
            return self._resolve_s3(uri)
        return self._resolve_local(uri, base_dir)

    def _resolve_s3(self, uri: str) -> str:
        if not s3_key_is_clean(uri):
            raise ResyncError(ErrorClass.URI_NOT_ALLOWED, "S3 key contains '.' or '..' segments", item=uri)
        if not any(uri.startswith(root) for root in self.s3_roots):
            raise ResyncError(ErrorClass.URI_NOT_ALLOWED, f"outside the allowed roots {self.s3_roots or '(no s3 roots)'}", item=uri)
        return uri

    def _resolve_local(self, uri: str, base_dir: str | Path | None) -> str:
        raw = urlparse(uri).path if uri.startswith("file://") else uri
        if uri.startswith("file://") and urlparse(uri).netloc not in ("", "localhost"):
            raise ResyncError(ErrorClass.URI_NOT_ALLOWED, "file:// URIs must name a local path", item=uri)
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = Path(base_dir or ".") / path
        resolved = path.resolve()  # follows symlinks, so a link pointing out of a root is caught
        if not any(resolved == root or root in resolved.parents for root in self.local_roots):
            raise ResyncError(
                ErrorClass.URI_NOT_ALLOWED,
                f"resolves to {resolved}, outside the allowed roots {[str(r) for r in self.local_roots]}",
                item=uri,
            )
        return str(resolved)
