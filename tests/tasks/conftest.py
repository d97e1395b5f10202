"""Fixtures of the per-item task tests."""

from __future__ import annotations

import pytest

from catalogs.settings import Settings
from catalogs.storage import Storage


@pytest.fixture(scope="module")
def media_env(tmp_path_factory, shared_data_or_none):
    """(settings, storage, shared data folder, scratch folder) for a module working on real clips:
    a fresh storage root, catalog URIs allowed in the scratch folder and ../shared/data."""
    if shared_data_or_none is None:
        pytest.skip("test media folder ../shared/data is absent")
    scratch = tmp_path_factory.mktemp("media")
    settings = Settings(root=str(scratch / "root"), allowed_roots=[str(scratch), str(shared_data_or_none)])
    return settings, Storage(settings), shared_data_or_none, scratch
