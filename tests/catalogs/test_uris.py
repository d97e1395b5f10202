from pathlib import Path

import pytest

from catalogs.errors import ErrorClass, ResyncError
from catalogs.uris import UriPolicy


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "media" / "sub").mkdir(parents=True)
    (tmp_path / "media" / "sub" / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("s")
    return tmp_path / "media"


def rejected(policy: UriPolicy, uri: str, base=None) -> str:
    with pytest.raises(ResyncError) as e:
        policy.resolve(uri, base)
    assert e.value.error_class == ErrorClass.URI_NOT_ALLOWED
    assert uri.strip() in str(e.value)  # the error names the URI
    return e.value.reason


def test_paths_inside_roots_resolve(root: Path):
    p = UriPolicy([str(root), "s3://bucket/media"])
    assert p.resolve("sub/a.mp4", root) == str(root / "sub" / "a.mp4")
    assert p.resolve(str(root / "sub" / ".." / "sub" / "a.mp4")) == str(root / "sub" / "a.mp4")
    assert p.resolve(f"file://{root}/sub/a.mp4") == str(root / "sub" / "a.mp4")
    assert p.resolve("s3://bucket/media/x/y.mp4") == "s3://bucket/media/x/y.mp4"


def test_escapes_and_foreign_schemes_are_rejected(root: Path, tmp_path: Path):
    p = UriPolicy([str(root), "s3://bucket/media"])
    assert "outside the allowed roots" in rejected(p, "../secret.txt", root)
    rejected(p, "sub/../../secret.txt", root)
    rejected(p, "/etc/passwd")
    rejected(p, "file:///etc/passwd")
    rejected(p, "file://otherhost/etc/passwd")
    assert "scheme" in rejected(p, "http://127.0.0.1/x.mp4")
    rejected(p, "ftp://host/x.mp4")
    rejected(p, "gs://bucket/media/x.mp4")
    rejected(p, "s3://bucket/other/x.mp4")
    rejected(p, "s3://bucket/mediaX/x.mp4")          # a prefix of a name is not a folder
    rejected(p, "s3://bucket/media/../secrets/x.mp4")
    # a symlink inside a root pointing outside is an escape too
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    rejected(p, "link.txt", root)


def test_empty_uri_is_an_invalid_row(root: Path):
    with pytest.raises(ResyncError) as e:
        UriPolicy([str(root)]).resolve("  ")
    assert e.value.error_class == ErrorClass.INVALID_ROW
