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


def test_flows_refuse_an_unknown_run_or_error_class(tmp_path):
    """Deployments call the flows without the CLI's checks: a typo there must fail the flow run,
    not report on nothing (checked on the flows' own functions, before any Prefect task)."""
    import pytest

    from catalogs.delta import DeltaTables
    from catalogs.runs import RunLog
    from catalogs.storage import Storage
    from flows.qa import qa_report
    from flows.reprocess import reprocess_failed

    root = str(tmp_path / "root")
    RunLog(DeltaTables(Storage(Settings(root=root)))).start("nightly", {}, "nightly-known")
    with pytest.raises(KeyError, match="'typo'"):
        qa_report.fn(root=root, run="typo")
    with pytest.raises(KeyError, match="'typo'"):
        qa_report.fn(root=root, run="nightly-known", compare="typo")
    with pytest.raises(ValueError, match="error class 'typo'"):
        reprocess_failed.fn(root=root, error_class="typo")
    with pytest.raises(KeyError, match="'typo'"):
        reprocess_failed.fn(root=root, run="typo")
    assert [r["run_id"] for r in RunLog(DeltaTables(Storage(Settings(root=root)))).all()] == ["nightly-known"]


def test_a_failed_shard_is_named_with_the_class_of_its_error():
    """A run whose shard failed after its retries says why by class (a person reprocesses by class):
    the state is made by Prefect's own ``exception_to_failed_state``, as its engine makes a failed
    task's; an error that is not ours is ``internal``, a state without one too."""
    import asyncio

    from prefect.states import Failed, exception_to_failed_state

    from catalogs.errors import ErrorClass, ResyncError
    from flows.dubbing import failed_shards_message, shard_error_class

    gone = ResyncError(ErrorClass.STORAGE_ERROR, "OSError: connection refused", item="s3://b/root/manifests/dubs")
    assert shard_error_class(asyncio.run(exception_to_failed_state(gone))) == ErrorClass.STORAGE_ERROR
    assert shard_error_class(asyncio.run(exception_to_failed_state(ValueError("a bug")))) == ErrorClass.INTERNAL
    assert shard_error_class(Failed()) == ErrorClass.INTERNAL
    message = failed_shards_message({"shard-b": "storage_error", "shard-a": "internal", "shard-c": "storage_error"})
    assert message == ("3 shard(s) failed after retries [internal, storage_error]; their items stay pending: "
                       "shard-a, shard-b, shard-c")
