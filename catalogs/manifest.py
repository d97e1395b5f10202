"""The dubs manifest: one row per attempt, committed a shard at a time, read by time travel.

A shard's rows land in one Delta commit whose metadata carries the run and shard ids; a Delta app
transaction (``run_id/shard_id``) makes a retried commit of the same shard a no-op, so a shard task
that crashed after committing cannot duplicate rows. Committed versions are never rewritten: new
attempts are new rows, and "latest status" is a query over them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from catalogs.delta import DeltaTables
from catalogs.schemas import DUBS, DUBS_TABLE

STATUSES = ("succeeded", "failed", "skipped")


def dub_rows(rows: Iterable[dict]) -> pa.Table:
    """Rows (dicts) as a DUBS table; maps may be given as dicts; ``created_at`` defaults to now."""
    now = datetime.now(timezone.utc)
    fixed = []
    for r in rows:
        r = dict(r)
        if r["status"] not in STATUSES:
            raise ValueError(f"status {r['status']!r} is not one of {STATUSES}")
        for m in ("stage_seconds", "qa"):
            if isinstance(r.get(m), dict):
                r[m] = list(r[m].items())
        r.setdefault("created_at", now)
        fixed.append(r)
    return pa.Table.from_pylist(fixed, schema=DUBS)


class DubManifest:
    def __init__(self, tables: DeltaTables) -> None:
        self.tables = tables

    # --- writing -------------------------------------------------------------------------
    def commit_shard(self, run_id: str, shard_id: str, rows: pa.Table | list[dict]) -> int | None:
        """Append one shard's rows in one commit; returns the version, or None if already committed."""
        table = rows if isinstance(rows, pa.Table) else dub_rows(rows)
        bad = pc.any(pc.or_(pc.not_equal(table["run_id"], run_id), pc.not_equal(table["shard_id"], shard_id))).as_py()
        if bad:
            raise ValueError(f"rows of shard {shard_id} must all carry run_id={run_id} and shard_id={shard_id}")
        return self.tables.append(DUBS_TABLE, table, {"run_id": run_id, "shard_id": shard_id, "resync_op": "commit-shard"},
                                  txn=(f"{run_id}/{shard_id}", 1))

    def shard_committed(self, run_id: str, shard_id: str) -> bool:
        """Whether (run, shard) already committed: a retried shard task then has nothing to do."""
        return (self.tables.open(DUBS_TABLE).transaction_version(f"{run_id}/{shard_id}") or 0) >= 1

    def upsert_attempts(self, run_id: str, rows: pa.Table | list[dict]) -> int:
        """Merge attempts keyed by (video_id, language, input_key, attempt): new ones are inserted,
        ones already present are left as committed. For reprocessing, where a retry may overlap."""
        table = rows if isinstance(rows, pa.Table) else dub_rows(rows)
        dt = self.tables.open(DUBS_TABLE)
        keys = ("video_id", "language", "input_key", "attempt")
        (dt.merge(table, predicate=" AND ".join(f"t.{k} = s.{k}" for k in keys), source_alias="s", target_alias="t",
                  commit_properties=self.tables.commit_properties({"run_id": run_id, "resync_op": "upsert-attempts"}))
           .when_not_matched_insert_all().execute())
        return self.tables.open(DUBS_TABLE).version()

    # --- reading -------------------------------------------------------------------------
    def rows(self, version: int | None = None, columns: list[str] | None = None) -> pa.Table:
        return self.tables.read(DUBS_TABLE, columns=columns, version=version)

    def version_of_run(self, run_id: str) -> int | None:
        """The last version committed by ``run_id`` (time travel by run)."""
        return self.tables.version_with(DUBS_TABLE, "run_id", run_id)

    def as_of_run(self, run_id: str) -> pa.Table:
        v = self.version_of_run(run_id)
        if v is None:
            raise KeyError(f"run {run_id} committed nothing to the manifest")
        return self.rows(version=v)

    def latest(self, version: int | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        """Latest attempt per (video_id, language): the status a person asks for."""
        cols = None if columns is None else sorted({*columns, "video_id", "language", "created_at", "attempt"})
        df = self.rows(version, cols).to_pandas()
        df = df.sort_values(["created_at", "attempt"], kind="stable")
        return df.drop_duplicates(["video_id", "language"], keep="last").reset_index(drop=True)

    def history(self, video_id: str, language: str) -> pd.DataFrame:
        filt = [("video_id", "=", video_id), ("language", "=", language)]
        df = self.tables.read(DUBS_TABLE, filters=filt).to_pandas()
        return df.sort_values(["created_at", "attempt"], kind="stable").reset_index(drop=True)

    def succeeded_keys(self) -> set[str]:
        t = self.rows(columns=["input_key", "status"])
        return set(t.filter(pc.equal(t["status"], "succeeded"))["input_key"].to_pylist())
