"""Thin, safe access to the Delta tables under a storage root.

Why a module of its own: every writer must use the same commit discipline. Commits carry their
run and shard ids as commit metadata, retry when another writer won the race (S3 commits are made
safe by conditional PUT), and write a checkpoint every ``checkpoint_interval`` commits so that
opening a table reads one checkpoint plus a few JSON commits, however long its history.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from catalogs.errors import ErrorClass, ResyncError
from catalogs.schemas import TABLES
from catalogs.storage import Storage

T = TypeVar("T")


class DeltaTables:
    """Opens, creates and commits to the resync tables below one storage root."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.settings = storage.settings

    def uri(self, name: str) -> str:
        return self.storage.table_uri(name)

    def _opts(self, name: str) -> dict[str, str] | None:
        return self.storage.delta_options(self.uri(name))

    def _guard(self, name: str, op: Callable[[], T]) -> T:
        """Run a deltalake call; an object store failure (deltalake raises it as a plain OSError,
        after its retries) becomes ``storage_error`` naming the table, as for media."""
        try:
            return op()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise ResyncError(ErrorClass.STORAGE_ERROR, f"{type(e).__name__}: {e}", item=self.uri(name)) from e

    def exists(self, name: str) -> bool:
        return self._guard(name, lambda: DeltaTable.is_deltatable(self.uri(name), storage_options=self._opts(name)))

    def open(self, name: str, version: int | None = None) -> DeltaTable:
        """The table at its latest (or a given) version; created empty if it does not exist yet."""
        def get() -> DeltaTable:
            try:
                return DeltaTable(self.uri(name), version=version, storage_options=self._opts(name))
            except TableNotFoundError:
                self.ensure(name)
                return DeltaTable(self.uri(name), version=version, storage_options=self._opts(name))
        return self._guard(name, get)

    def ensure(self, name: str) -> None:
        """Create the table with its schema unless it exists; safe when several processes race."""
        self._guard(name, lambda: self._ensure(name))

    def _ensure(self, name: str) -> None:
        if self.exists(name):
            return
        try:
            DeltaTable.create(
                self.uri(name),
                schema=TABLES[name],
                mode="ignore",
                configuration={"delta.checkpointInterval": str(self.settings.checkpoint_interval)},
                storage_options=self._opts(name),
                commit_properties=CommitProperties(custom_metadata={"resync_op": "create"}),
            )
        except (CommitFailedError, DeltaError):
            # Another process created it between our check and our commit: that is success.
            if not self.exists(name):
                raise

    def read(self, name: str, columns: list[str] | None = None, version: int | None = None,
             filters: Any = None) -> pa.Table:
        """A table (or some columns of it) as Arrow; never lists directories, only the log."""
        dt = self.open(name, version)
        return self._guard(name, lambda: dt.to_pyarrow_table(columns=columns, filters=filters))

    def append(self, name: str, rows: pa.Table, metadata: dict[str, str], *,
               txn: tuple[str, int] | None = None, evolve_schema: bool = False) -> int | None:
        """Append ``rows`` in one commit; returns the new version, or None if ``txn`` was already committed.

        ``txn`` = (app_id, version) makes the commit idempotent: a Delta app transaction records
        it, and a retry of the same (app_id, version) commits nothing.
        """
        return self._guard(name, lambda: self._append(name, rows, metadata, txn, evolve_schema))

    def _append(self, name: str, rows: pa.Table, metadata: dict[str, str], txn: tuple[str, int] | None,
                evolve_schema: bool) -> int | None:
        dt = self.open(name)  # one snapshot serves the txn check, the schema and the write
        if txn is not None:
            done = dt.transaction_version(txn[0])
            if done is not None and done >= txn[1]:
                return None
        if not evolve_schema:
            rows = self._conform(name, rows, dt)
        props = CommitProperties(
            custom_metadata=dict(metadata),
            max_commit_retries=self.settings.commit_retries,
            app_transactions=[Transaction(app_id=txn[0], version=txn[1], last_updated=int(time.time() * 1000))] if txn else None,
        )
        write_deltalake(
            dt, rows, mode="append",
            schema_mode="merge" if evolve_schema else None,
            storage_options=self._opts(name),
            commit_properties=props,
            post_commithook_properties=PostCommitHookProperties(create_checkpoint=True),
        )
        # The handle we wrote through now stands at our commit's version, even when other
        # writers committed before or after us (reading history for it races with them).
        return dt.version()

    @staticmethod
    def _conform(name: str, rows: pa.Table, dt: DeltaTable) -> pa.Table:
        """Rows in our schema, plus null columns for any a newer writer added (schema evolution)."""
        rows = rows.select(TABLES[name].names).cast(TABLES[name])
        current = pa.schema(dt.schema().to_arrow())
        for f in current:
            if f.name not in rows.column_names:
                rows = rows.append_column(f.name, pa.nulls(rows.num_rows, f.type))
        return rows.select(current.names)

    def commit_properties(self, metadata: dict[str, str]) -> CommitProperties:
        return CommitProperties(custom_metadata=dict(metadata), max_commit_retries=self.settings.commit_retries)

    def version_with(self, name: str, key: str, value: str) -> int | None:
        """Latest version whose commit metadata has ``key == value`` (e.g. a run id)."""
        for entry in self.open(name).history():  # newest first; custom metadata sits at top level
            if entry.get(key) == value:
                return int(entry["version"])
        return None

    def maintain(self, name: str) -> dict[str, Any]:
        """Compact small files and checkpoint; old versions stay readable (nothing is vacuumed)."""
        dt = self.open(name)
        metrics = dt.optimize.compact(commit_properties=self.commit_properties({"resync_op": "compact"}))
        dt = self.open(name)
        dt.create_checkpoint()
        return metrics


__all__ = ["DeltaTables", "TableNotFoundError"]
