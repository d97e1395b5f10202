"""Catalog ingestion: listings of videos and dub requests into the catalog Delta tables.

Bad rows never stop an ingest: each is recorded in ``catalog/rejects`` with its row, reason and
error class, and the good rows land. A storage failure is not a bad row: it stops the ingest. Ingest is idempotent: a listing whose rows and files have not
changed commits nothing, so the tables gain no new version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Callable

import pyarrow as pa

from catalogs.delta import DeltaTables
from catalogs.errors import ErrorClass, ResyncError
from catalogs.listing import ListingRow, read_listing
from catalogs.probe import probe_audio, probe_video
from catalogs.schemas import REJECTS, REJECTS_TABLE, REQUESTS, REQUESTS_TABLE, VIDEOS, VIDEOS_TABLE
from catalogs.storage import Storage
from catalogs.uris import UriPolicy, listing_dir

LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")  # BCP-47, the parts we use
VIDEO_COLUMNS = ("video_id", "uri", "speaker_id")
REQUEST_COLUMNS = ("video_id", "language", "audio_uri")
COMPARED = {  # columns that decide whether a re-ingested row changed
    VIDEOS_TABLE: [n for n in VIDEOS.names if n != "ingested_at"],
    REQUESTS_TABLE: [n for n in REQUESTS.names if n != "ingested_at"],
}

Progress = Callable[[str], None]
log = logging.getLogger(__name__)


@dataclass
class Reject:
    listing: str
    row_number: int
    item: str | None
    row: dict
    error_class: ErrorClass
    reason: str
    source: str

    @property
    def row_key(self) -> str:
        return hashlib.sha256(json.dumps([self.listing, self.row], sort_keys=True).encode()).hexdigest()


@dataclass
class IngestReport:
    added: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    unchanged: dict[str, int] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    versions: dict[str, int | None] = field(default_factory=dict)  # new table version, None = no commit


class CatalogIngest:
    """Validates, probes and upserts listing rows into the catalog tables."""

    def __init__(self, storage: Storage, progress: Progress | None = None) -> None:
        self.storage = storage
        self.settings = storage.settings
        self.tables = DeltaTables(storage)
        self.policy = UriPolicy(self.settings.all_allowed_roots())
        self.progress = progress or (lambda _msg: None)
        self.now = datetime.now(timezone.utc)

    # --- entry point ---------------------------------------------------------------------
    def run(self, videos_file: str | None, requests_file: str | None = None) -> IngestReport:
        """Probe every row of both listings, then commit: a storage failure while probing (the long
        part) stops the ingest before any table has changed."""
        report = IngestReport()
        videos = self._video_rows(videos_file, report) if videos_file else None
        if requests_file:
            requests = self._request_rows(requests_file, report, {r["video_id"] for r in videos or []})
        if videos is not None:
            self._upsert(VIDEOS_TABLE, videos, ["video_id"], report)
        if requests_file:
            self._upsert(REQUESTS_TABLE, requests, ["video_id", "language"], report)
        self._record_rejects(report)
        return report

    def refresh(self, items: set[tuple[str, str]]) -> IngestReport:
        """Re-probe the files behind catalog rows of these (video_id, language) items, for
        reprocessing after someone replaced a file: changed files get new probes and hashes (so new
        input keys), unchanged ones are not read again. A file that is still bad keeps its old row
        and is recorded as a reject."""
        report = IngestReport()
        vids = {v for v, _ in items}
        videos = [r for r in self.tables.read(VIDEOS_TABLE).to_pylist() if r["video_id"] in vids]
        todo = []
        for n, r in enumerate(videos, 1):
            row = ListingRow(n, {"video_id": r["video_id"], "uri": r["uri"], "speaker_id": r["speaker_id"], "title": r["title"]})
            todo.append((row, r["video_id"], partial(self._video_record, row, r["uri"], r)))
        self._upsert(VIDEOS_TABLE, self._probe_all("video", todo, "videos", "catalog refresh", report), ["video_id"], report)
        requests = [r for r in self.tables.read(REQUESTS_TABLE).to_pylist() if (r["video_id"], r["language"]) in items]
        todo = []
        for n, r in enumerate(requests, 1):
            row = ListingRow(n, {"video_id": r["video_id"], "language": r["language"], "audio_uri": r["audio_uri"],
                                 "script": r["script"]})
            todo.append((row, f"{r['video_id']}/{r['language']}", partial(self._request_record, row, r["audio_uri"], r)))
        self._upsert(REQUESTS_TABLE, self._probe_all("request", todo, "requests", "catalog refresh", report),
                     ["video_id", "language"], report)
        self._record_rejects(report)
        return report

    # --- videos --------------------------------------------------------------------------
    def _video_rows(self, listing: str, report: IngestReport) -> list[dict]:
        existing = {r["video_id"]: r for r in self.tables.read(VIDEOS_TABLE).to_pylist()}
        base = self._base_dir(listing)
        seen: set[str] = set()
        todo: list[tuple[ListingRow, str, Callable[[], dict]]] = []
        for row in read_listing(self.storage, listing):
            item = row.values.get("video_id")
            try:
                self._require(row, VIDEO_COLUMNS)
                if item in seen:
                    raise ResyncError(ErrorClass.DUPLICATE_ID, f"video_id {item!r} appears earlier in the listing")
                seen.add(item)
                uri = self.policy.resolve(row.values["uri"], base)
                todo.append((row, item, partial(self._video_record, row, uri, existing.get(item))))
            except ResyncError as e:
                report.rejects.append(self._reject("videos", row, item, e, listing))
        return self._probe_all("video", todo, "videos", listing, report)

    def _video_record(self, row: ListingRow, uri: str, old: dict | None) -> dict:
        size, mtime = self._stat(uri)
        v = row.values
        if old and old["uri"] == uri and old["size_bytes"] == size and old["source_mtime"] == mtime:
            probe, sha = None, old["sha256"]  # unchanged file: do not read it again
        else:
            probe, sha = probe_video(self.storage, uri), self.storage.sha256(uri)
        rec = {"video_id": v["video_id"], "uri": uri, "speaker_id": v["speaker_id"], "title": v.get("title"),
               "sha256": sha, "size_bytes": size, "source_mtime": mtime, "ingested_at": self.now}
        if probe is None:
            rec.update({k: old[k] for k in ("duration_s", "fps", "frame_count", "width", "height", "rotation",
                                            "has_audio", "video_codec", "audio_codec")})
        else:
            rec.update(duration_s=probe.duration_s, fps=probe.fps, frame_count=probe.frame_count,
                       width=probe.width, height=probe.height, rotation=probe.rotation,
                       has_audio=probe.has_audio, video_codec=probe.video_codec, audio_codec=probe.audio_codec)
        return rec

    # --- requests ------------------------------------------------------------------------
    def _request_rows(self, listing: str, report: IngestReport, landing: set[str] | None = None) -> list[dict]:
        """Probed request rows; ``landing``: ids of videos this ingest is about to commit."""
        videos = set(self.tables.read(VIDEOS_TABLE, columns=["video_id"]).column("video_id").to_pylist()) | (landing or set())
        existing = {(r["video_id"], r["language"]): r for r in self.tables.read(REQUESTS_TABLE).to_pylist()}
        base = self._base_dir(listing)
        seen: set[tuple[str, str]] = set()
        todo: list[tuple[ListingRow, str, Callable[[], dict]]] = []
        for row in read_listing(self.storage, listing):
            v = row.values
            item = f"{v.get('video_id')}/{v.get('language')}"
            try:
                self._require(row, REQUEST_COLUMNS)
                if not LANGUAGE_TAG.match(v["language"]):
                    raise ResyncError(ErrorClass.INVALID_ROW, f"language {v['language']!r} is not a BCP-47 tag")
                key = (v["video_id"], v["language"])
                if key in seen:
                    raise ResyncError(ErrorClass.DUPLICATE_ID, f"request {item} appears earlier in the listing")
                seen.add(key)
                if v["video_id"] not in videos:
                    raise ResyncError(ErrorClass.UNKNOWN_VIDEO, f"video_id {v['video_id']!r} is not in the catalog")
                uri = self.policy.resolve(v["audio_uri"], base)
                todo.append((row, item, partial(self._request_record, row, uri, existing.get(key))))
            except ResyncError as e:
                report.rejects.append(self._reject("requests", row, item, e, listing))
        return self._probe_all("request", todo, "requests", listing, report)

    def _probe_all(self, what: str, todo: list[tuple[ListingRow, str, Callable[[], dict]]], kind: str,
                   listing: str, report: IngestReport) -> list[dict]:
        """Probe rows on a few threads (I/O- and FFmpeg-bound, which release the GIL), in listing order.

        A storage failure is no fault of the row: it stops the ingest (``ResyncError`` with class
        ``storage_error``, nothing committed) instead of rejecting every row an outage touches."""
        def run(job: tuple[ListingRow, str, Callable[[], dict]]) -> dict | Reject:
            row, item, probe = job
            self.progress(f"{what} {item}")
            try:
                return probe()
            except ResyncError as e:
                if e.error_class == ErrorClass.STORAGE_ERROR:
                    raise ResyncError(e.error_class, f"storage failed while reading {what} {item}, so nothing was "
                                      f"ingested (run it again once storage is back): {e}") from e
                return self._reject(kind, row, item, e, listing)
            except Exception as e:  # a bug or an unforeseen file: one bad row, never a failed ingest
                log.exception("probing %s %s failed", what, item)
                return self._reject(kind, row, item, ResyncError(ErrorClass.INTERNAL, f"{type(e).__name__}: {e}"), listing)

        with ThreadPoolExecutor(max_workers=self.settings.probe_workers) as pool:
            results = list(pool.map(run, todo))
        report.rejects.extend(r for r in results if isinstance(r, Reject))
        return [r for r in results if not isinstance(r, Reject)]

    def _request_record(self, row: ListingRow, uri: str, old: dict | None) -> dict:
        size, mtime = self._stat(uri)
        v = row.values
        rec = {"video_id": v["video_id"], "language": v["language"], "audio_uri": uri, "script": v.get("script"),
               "size_bytes": size, "source_mtime": mtime, "ingested_at": self.now}
        if old and old["audio_uri"] == uri and old["size_bytes"] == size and old["source_mtime"] == mtime:
            rec.update({k: old[k] for k in ("audio_sha256", "audio_duration_s", "audio_sample_rate", "audio_channels")})
            return rec
        probe = probe_audio(self.storage, uri)
        if probe.duration_s > self.settings.max_audio_seconds:
            raise ResyncError(ErrorClass.AUDIO_TOO_LONG,
                              f"audio is {probe.duration_s:.0f} s, over the {self.settings.max_audio_seconds:.0f} s limit", item=uri)
        rec.update(audio_sha256=self.storage.sha256(uri), audio_duration_s=probe.duration_s,
                   audio_sample_rate=probe.sample_rate, audio_channels=probe.channels)
        return rec

    # --- shared --------------------------------------------------------------------------
    @staticmethod
    def _require(row: ListingRow, columns: tuple[str, ...]) -> None:
        if row.parse_error:
            raise ResyncError(ErrorClass.INVALID_ROW, row.parse_error)
        missing = [c for c in columns if not row.values.get(c)]
        if missing:
            raise ResyncError(ErrorClass.INVALID_ROW, f"missing required column(s): {', '.join(missing)}")

    def _stat(self, uri: str) -> tuple[int, float | None]:
        try:
            size = self.storage.size(uri)
        except FileNotFoundError:
            raise ResyncError(ErrorClass.MISSING_FILE, "file does not exist", item=uri) from None
        if size == 0:
            raise ResyncError(ErrorClass.EMPTY_FILE, "file is empty (0 bytes)", item=uri)
        return size, self.storage.modified(uri)

    @staticmethod
    def _base_dir(listing: str) -> str:
        """Relative URIs are taken from the listing's folder, on S3 as on local disk."""
        return listing_dir(listing)

    def _reject(self, listing_kind: str, row: ListingRow, item: str | None, e: ResyncError, source: str) -> Reject:
        reason = e.reason if e.item is None else f"{e.item}: {e.reason}"
        return Reject(listing_kind, row.number, item, row.values, e.error_class, reason, source)

    def _upsert(self, name: str, rows: list[dict], keys: list[str], report: IngestReport) -> None:
        """Insert new rows and update changed ones in one commit; nothing changed, no commit."""
        schema = {VIDEOS_TABLE: VIDEOS, REQUESTS_TABLE: REQUESTS}[name]
        current = {tuple(r[k] for k in keys): r for r in self.tables.read(name).to_pylist()}
        changed, added, updated = [], 0, 0
        for r in rows:
            old = current.get(tuple(r[k] for k in keys))
            if old is None:
                added += 1
            elif any(old[c] != r.get(c) for c in COMPARED[name]):
                updated += 1
            else:
                continue
            changed.append(r)
        report.added[name], report.updated[name] = added, updated
        report.unchanged[name] = len(rows) - added - updated
        if not changed:
            report.versions[name] = None
            return
        source = pa.Table.from_pylist(changed, schema=schema)
        dt = self.tables.open(name)
        predicate = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        (dt.merge(source, predicate=predicate, source_alias="s", target_alias="t",
                  commit_properties=self.tables.commit_properties({"resync_op": "ingest"}))
           .when_matched_update_all().when_not_matched_insert_all().execute())
        report.versions[name] = self.tables.open(name).version()

    def _record_rejects(self, report: IngestReport) -> None:
        """Append rejects not already recorded (same row, same class), so re-ingest adds nothing."""
        if not report.rejects:
            return
        known = {(r["row_key"], r["error_class"])
                 for r in self.tables.read(REJECTS_TABLE, columns=["row_key", "error_class"]).to_pylist()}
        new = [r for r in report.rejects if (r.row_key, str(r.error_class)) not in known]
        if not new:
            return
        table = pa.Table.from_pylist([{
            "listing": r.listing, "row_key": r.row_key, "row_number": r.row_number, "item": r.item,
            "row": json.dumps(r.row, sort_keys=True), "error_class": str(r.error_class), "reason": r.reason,
            "source": r.source, "seen_at": self.now} for r in new], schema=REJECTS)
        report.versions[REJECTS_TABLE] = self.tables.append(REJECTS_TABLE, table, {"resync_op": "ingest-rejects"})


def open_rejects(tables: DeltaTables) -> list[dict]:
    """Rejected rows not since fixed: a fix is a later ingest of the same item."""
    rejects = tables.read(REJECTS_TABLE).to_pylist()
    landed_at: dict[str, datetime] = {}
    for r in tables.read(VIDEOS_TABLE, columns=["video_id", "ingested_at"]).to_pylist():
        landed_at[r["video_id"]] = r["ingested_at"]
    for r in tables.read(REQUESTS_TABLE, columns=["video_id", "language", "ingested_at"]).to_pylist():
        landed_at[f"{r['video_id']}/{r['language']}"] = r["ingested_at"]
    out = [r for r in rejects if not (r["item"] in landed_at and landed_at[r["item"]] > r["seen_at"])]
    return sorted(out, key=lambda r: (r["seen_at"], r["listing"], r["row_number"]))
