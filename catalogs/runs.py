"""The runs table: one row per run (kind, parameters, code version, counts, start and end)."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa

from catalogs.delta import DeltaTables
from catalogs.schemas import RUNS, RUNS_TABLE

RUN_KINDS = ("nightly", "finetune", "reprocess", "qa", "train")


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    try:
        v = version("resync")
    except PackageNotFoundError:
        v = "0+unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        return f"{v}+g{sha}"
    except (OSError, subprocess.SubprocessError):
        return v


def new_run_id(kind: str) -> str:
    return f"{kind}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


class RunLog:
    def __init__(self, tables: DeltaTables) -> None:
        self.tables = tables

    def start(self, kind: str, parameters: dict, run_id: str | None = None) -> str:
        if kind not in RUN_KINDS:
            raise ValueError(f"run kind {kind!r} is not one of {RUN_KINDS}")
        run_id = run_id or new_run_id(kind)
        row = {"run_id": run_id, "kind": kind, "status": "running", "parameters": json.dumps(parameters, sort_keys=True, default=str),
               "code_version": code_version(), "planned": 0, "succeeded": 0, "failed": 0, "skipped": 0,
               "started_at": datetime.now(timezone.utc), "ended_at": None}
        self.tables.append(RUNS_TABLE, pa.Table.from_pylist([row], schema=RUNS), {"run_id": run_id, "resync_op": "run-start"},
                           txn=(f"run/{run_id}", 1))
        return run_id

    def finish(self, run_id: str, status: str, planned: int, succeeded: int, failed: int, skipped: int = 0) -> None:
        dt = self.tables.open(RUNS_TABLE)
        dt.update(
            predicate=f"run_id = '{run_id.replace(chr(39), '')}'",
            updates={"status": f"'{status}'", "planned": str(int(planned)), "succeeded": str(int(succeeded)),
                     "failed": str(int(failed)), "skipped": str(int(skipped)),
                     "ended_at": f"'{datetime.now(timezone.utc).isoformat()}'"},
            commit_properties=self.tables.commit_properties({"run_id": run_id, "resync_op": "run-finish"}),
        )

    def get(self, run_id: str) -> dict | None:
        rows = self.tables.read(RUNS_TABLE, filters=[("run_id", "=", run_id)]).to_pylist()
        return rows[0] if rows else None

    def all(self) -> list[dict]:
        return sorted(self.tables.read(RUNS_TABLE).to_pylist(), key=lambda r: r["started_at"])
