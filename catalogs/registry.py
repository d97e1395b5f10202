"""The model registry table: which model versions exist, and which one serves which speaker."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from catalogs.delta import DeltaTables
from catalogs.schemas import REGISTRY, REGISTRY_TABLE

UNTRAINED = "untrained"


@dataclass
class ModelRecord:
    model_id: str
    kind: str
    version: str
    uri: str
    speaker_id: str | None = None          # None = base model
    parent: str | None = None
    training_data: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


class ModelRegistry:
    def __init__(self, tables: DeltaTables) -> None:
        self.tables = tables

    def register(self, rec: ModelRecord) -> int | None:
        row = {**rec.__dict__, "metrics": list(rec.metrics.items()), "created_at": datetime.now(timezone.utc)}
        table = pa.Table.from_pylist([row], schema=REGISTRY)
        return self.tables.append(REGISTRY_TABLE, table, {"resync_op": "register", "model_id": rec.model_id},
                                  txn=(f"registry/{rec.kind}/{rec.version}", 1))

    def models(self) -> list[dict]:
        return sorted(self.tables.read(REGISTRY_TABLE).to_pylist(), key=lambda r: r["created_at"])

    def latest(self, speaker_id: str | None = None, kind: str = "bundle") -> dict | None:
        """Newest model of ``kind`` for ``speaker_id`` (None: the newest base model)."""
        rows = [r for r in self.models() if r["kind"] == kind and r["speaker_id"] == speaker_id]
        return rows[-1] if rows else None

    def versions_by_speaker(self, kind: str = "bundle") -> tuple[str, dict[str, str]]:
        """(base version, {speaker_id: newest speaker version}); the base is ``untrained`` when none exists."""
        base, speakers = UNTRAINED, {}
        for r in self.models():  # oldest first, so later rows win
            if r["kind"] != kind:
                continue
            if r["speaker_id"] is None:
                base = r["version"]
            else:
                speakers[r["speaker_id"]] = r["version"]
        return base, speakers
