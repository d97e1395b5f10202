"""Reading catalog listings (CSV, Parquet or JSONL) into plain rows.

A listing is user input: a line of JSONL that does not parse is one bad row, not a failed ingest,
so JSONL is parsed line by line. Every value arrives as a string (or None) so that validation
happens in one place, in ``catalogs.ingest``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from catalogs.errors import ErrorClass, ResyncError
from catalogs.storage import Storage, is_s3
from catalogs.uris import join_relative, listing_dir


@dataclass(frozen=True)
class ListingRow:
    number: int                     # 1-based data row number in the file
    values: dict[str, str | None]   # column -> stripped string, None when empty/missing
    parse_error: str | None = None  # set when the line itself could not be read


def _clean(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def read_listing(storage: Storage, uri: str) -> list[ListingRow]:
    """Rows of a listing; the format is chosen by the file extension."""
    name = uri.lower()
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ResyncError(ErrorClass.MISSING_FILE, "listing file does not exist", item=uri) from None
    if name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        return [ListingRow(i, {k.strip(): _clean(v) for k, v in r.items() if k is not None})
                for i, r in enumerate(reader, 1)]
    if name.endswith((".parquet", ".pq")):
        table = pq.read_table(io.BytesIO(data))
        return [ListingRow(i, {k: _clean(v) for k, v in r.items()}) for i, r in enumerate(table.to_pylist(), 1)]
    if name.endswith((".jsonl", ".ndjson", ".json")):
        rows = []
        for i, line in enumerate((ln for ln in data.decode("utf-8").splitlines() if ln.strip()), 1):
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("a JSON object per line is expected")
                rows.append(ListingRow(i, {k: _clean(v) for k, v in obj.items()}))
            except ValueError as e:
                rows.append(ListingRow(i, {"_line": line[:500]}, parse_error=f"line does not parse: {e}"))
        return rows
    raise ResyncError(ErrorClass.UNSUPPORTED_INPUT, "listing must be .csv, .parquet or .jsonl", item=uri)


def labelled_videos(storage: Storage, listing: str) -> tuple[list[str], list[str]]:
    """(URIs, speaker ids) from a listing with ``uri`` and ``speaker_id`` columns, for training; relative
    URIs are taken from the listing's folder, as ingest does. A row without both is an error."""
    uris, speakers = [], []
    for row in read_listing(storage, listing):
        uri, speaker = row.values.get("uri"), row.values.get("speaker_id")
        if row.parse_error or not uri or not speaker:
            raise ResyncError(ErrorClass.INVALID_ROW, f"row {row.number} needs uri and speaker_id "
                              f"({row.parse_error or row.values})", item=listing)
        uri = join_relative(listing_dir(listing), uri)
        if not is_s3(uri):
            uri = os.path.normpath(os.path.expanduser(uri))
        uris.append(uri)
        speakers.append(speaker)
    return uris, speakers
