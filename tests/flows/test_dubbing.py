"""The Prefect side of a dubbing run (flows/dubbing.py), without a cluster."""

from __future__ import annotations

from catalogs.settings import Settings


def test_a_shard_task_has_the_prefect_timeout_of_its_setting():
    """RESYNC_SHARD_TIMEOUT_S is the shard's deadline (unfinished items fail, the rest commits, in
    infra/shards.py); the Prefect task times out the commit grace later, so a shard stuck even in
    its commit fails and is retried instead of holding the run forever."""
    from flows.dubbing import dub_shard, shard_task

    settings = Settings(shard_timeout_s=120, shard_commit_grace_s=30, shard_retries=4)
    task = shard_task(settings)
    assert task.timeout_seconds == 150
    assert task.retries == 4 and task.fn is dub_shard.fn
