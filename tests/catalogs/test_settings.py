from catalogs.settings import Settings
from flows.cli import make_settings


def test_defaults_env_and_flags(monkeypatch):
    monkeypatch.delenv("RESYNC_ROOT", raising=False)
    assert Settings().root == "./resync-data"
    monkeypatch.setenv("RESYNC_ROOT", "s3://env/root")
    monkeypatch.setenv("RESYNC_SHARD_SIZE", "7")
    monkeypatch.setenv("RESYNC_ALLOWED_ROOTS", '["/a", "s3://b/c"]')
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
    s = Settings()
    assert (s.root, s.shard_size, s.allowed_roots, s.s3_endpoint_url) == ("s3://env/root", 7, ["/a", "s3://b/c"], "http://127.0.0.1:1234")
    # CLI flags win over the environment
    f = make_settings(root="/flag/root", allow_root=["/x"], s3_endpoint_url=None)
    assert (f.root, f.allowed_roots, f.s3_endpoint_url) == ("/flag/root", ["/x"], "http://127.0.0.1:1234")
    assert "s3://env/root" in Settings().all_allowed_roots()
