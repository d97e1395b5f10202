"""The ``resync`` command line.

Exit codes scripts can rely on: 0 done; 1 a fatal error (storage unreachable, bad listing file);
2 bad usage; 3 done, but some rows were rejected (``catalog ingest --strict`` only).
"""

from __future__ import annotations

import sys

from flows.cli_start import prepare_process

prepare_process(sys.argv)   # before any import below starts a thread: see flows.cli_start

import json  # noqa: E402 - the imports below come after prepare_process on purpose
import logging  # noqa: E402
from typing import Optional  # noqa: E402

import typer  # noqa: E402
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from catalogs.delta import DeltaTables  # noqa: E402
from catalogs.errors import ResyncError  # noqa: E402
from catalogs.plan import make_shards, plan_items  # noqa: E402
from catalogs.schemas import REQUESTS_TABLE, TABLES, VIDEOS_TABLE  # noqa: E402
from catalogs.storage import Storage  # noqa: E402
from flows.cli_common import (AllowOpt, EndpointOpt, RootOpt, console, end_process, fail, make_settings,  # noqa: E402
                              out, require_catalog, teardown_skipped)

app = typer.Typer(help="resync: batch lip-sync dubbing for video catalogs.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
catalog_app = typer.Typer(help="Catalog ingestion, inspection and shard planning.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("ingest")
def catalog_ingest(
    videos: Optional[str] = typer.Option(None, "--videos", help="Listing of videos (.csv, .parquet, .jsonl): video_id, uri, speaker_id[, title]."),
    requests: Optional[str] = typer.Option(None, "--requests", help="Listing of dub requests: video_id, language, audio_uri[, script]."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 3 when any row was rejected."),
    root: Optional[str] = RootOpt, allow_root: Optional[list[str]] = AllowOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
) -> None:
    """Probe the listed media and upsert it into the catalog tables; bad rows are reported, good rows land."""
    from catalogs.ingest import CatalogIngest   # here, not at the top: pandas is no part of `resync dub`'s start

    if not videos and not requests:
        fail("give --videos and/or --requests", 2)
    storage = Storage(make_settings(root, allow_root, s3_endpoint_url))
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("ingesting", total=None)
            report = CatalogIngest(storage, progress=lambda m: bar.update(task, description=f"probing {m}")).run(videos, requests)
    except ResyncError as e:
        fail(f"{e} [{e.error_class}]")
    t = Table(title=f"ingest into {storage.root}")
    for col in ("table", "added", "updated", "unchanged", "new version"):
        t.add_column(col)
    for name in (VIDEOS_TABLE, REQUESTS_TABLE):
        if name in report.added:
            t.add_row(name, str(report.added[name]), str(report.updated[name]), str(report.unchanged[name]),
                      str(report.versions.get(name) if report.versions.get(name) is not None else "-"))
    out.print(t)
    _print_rejects([{"listing": r.listing, "row_number": r.row_number, "item": r.item, "error_class": str(r.error_class),
                     "reason": r.reason} for r in report.rejects], "rejected rows")
    if strict and report.rejects:
        raise typer.Exit(3)


def _print_rejects(rows: list[dict], title: str) -> None:
    if not rows:
        return
    t = Table(title=f"{title} ({len(rows)})")
    for col in ("listing", "row", "item", "error class", "reason"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["listing"], str(r["row_number"]), str(r["item"]), r["error_class"], r["reason"])
    out.print(t)


@catalog_app.command("show")
def catalog_show(root: Optional[str] = RootOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
                 as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")) -> None:
    """Counts of videos and requests (by language), dub status counts, and the rejected rows not yet fixed."""
    from catalogs.ingest import open_rejects
    from catalogs.manifest import DubManifest

    tables = DeltaTables(Storage(make_settings(root, None, s3_endpoint_url)))
    require_catalog(tables)
    videos = tables.read(VIDEOS_TABLE, columns=["video_id"]).num_rows
    req = tables.read(REQUESTS_TABLE, columns=["language"]).to_pandas()
    by_lang = req["language"].value_counts().sort_index().to_dict()
    latest = DubManifest(tables).latest(columns=["status"])
    status = latest["status"].value_counts().to_dict() if not latest.empty else {}
    rejects = open_rejects(tables)
    if as_json:
        out.print_json(json.dumps({"videos": videos, "requests": int(len(req)), "requests_by_language": by_lang,
                                   "dub_status": status, "rejects": rejects}, default=str))
        return
    t = Table(title=f"catalog at {tables.storage.root}")
    t.add_column("what")
    t.add_column("count", justify="right")
    t.add_row("videos", str(videos))
    t.add_row("requests", str(len(req)))
    for lang, n in by_lang.items():
        t.add_row(f"  language {lang}", str(n))
    for s, n in sorted(status.items()):
        t.add_row(f"dubs {s} (latest)", str(n))
    out.print(t)
    _print_rejects(rejects, "bad rows")


@catalog_app.command("plan")
def catalog_plan(
    languages: Optional[str] = typer.Option(None, "--languages", help="Comma-separated language tags to plan (default: all)."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", min=1, help="Items per shard. Env: RESYNC_SHARD_SIZE. Default 16."),
    as_json: bool = typer.Option(False, "--json", help="Print the shards as JSON."),
    root: Optional[str] = RootOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
) -> None:
    """Deterministic shards of the (video, language) items whose input_key has no success yet. Reads no media."""
    settings = make_settings(root, None, s3_endpoint_url, **({"shard_size": shard_size} if shard_size else {}))
    langs = [x.strip() for x in languages.split(",") if x.strip()] if languages else None
    tables = DeltaTables(Storage(settings))
    require_catalog(tables)
    items = plan_items(tables, settings.render_config, langs)
    shards = make_shards(items, settings.shard_size)
    if as_json:
        out.print_json(json.dumps([{"shard_id": s.shard_id, "items": [i.__dict__ for i in s.items]} for s in shards]))
        return
    t = Table(title=f"{len(items)} pending items in {len(shards)} shards")
    for col in ("shard", "items", "first", "last"):
        t.add_column(col)
    for s in shards:
        t.add_row(s.shard_id, str(len(s.items)), f"{s.items[0].video_id}/{s.items[0].language}",
                  f"{s.items[-1].video_id}/{s.items[-1].language}")
    out.print(t)


@app.command("track")
def track(
    video: str = typer.Argument(..., help="Video to track: a local path or s3:// URI."),
    output: str = typer.Option(..., "-o", "--output", help="Where to write the track artifact (.parquet)."),
    preview: Optional[str] = typer.Option(None, "--preview", help="Also write an H.264 preview with the mesh drawn over the video."),
    root: Optional[str] = RootOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
) -> None:
    """Track the speaking face: landmarks, pose, 3D dynamics, crops and flags, saved as Parquet; prints a summary."""
    from tasks import track_artifact
    from tasks.preview import write_preview
    from tasks.track import track_video

    settings = make_settings(root, None, s3_endpoint_url)
    storage = Storage(settings)
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("tracking", total=None)
            result = track_video(storage, settings, video, progress=lambda done, total: bar.update(task, completed=done, total=total))
            track_artifact.save(storage, result, output, storage.sha256(video))
            if preview:
                bar.update(task, description="writing preview", completed=0, total=result.n_frames)
                write_preview(storage, video, result, preview)
    except ResyncError as e:
        fail(f"{e} [{e.error_class}]")
    t = Table(title=f"track of {video}")
    t.add_column("what")
    t.add_column("value", overflow="fold")
    for k, v in result.summary().items():
        t.add_row(k, str(v))
    out.print(t)
    out.print(f"artifact: {output}" + (f"\npreview:  {preview}" if preview else ""))


@catalog_app.command("maintain")
def catalog_maintain(root: Optional[str] = RootOpt, s3_endpoint_url: Optional[str] = EndpointOpt) -> None:
    """Compact small files and checkpoint every table, so commits and reads stay fast as history grows.

    Nothing is vacuumed: every committed version stays readable by time travel."""
    tables = DeltaTables(Storage(make_settings(root, None, s3_endpoint_url)))
    require_catalog(tables)
    t = Table(title="maintenance")
    for col in ("table", "files removed", "files added"):
        t.add_column(col)
    for name in TABLES:
        m = tables.maintain(name)
        t.add_row(name, str(m.get("numFilesRemoved", 0)), str(m.get("numFilesAdded", 0)))
    out.print(t)


from flows.cli_models import register as _register_model_commands  # noqa: E402  (after app exists)

_register_model_commands(app)

from flows.cli_sync import register as _register_sync_command  # noqa: E402

_register_sync_command(app)

from flows.cli_run import run_app  # noqa: E402

app.add_typer(run_app, name="run")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        app()
    except SystemExit as e:     # how click ends every command, done or failed
        if teardown_skipped():  # the command finished all it started (resync dub): no teardown to wait for
            if isinstance(e.code, int) or e.code is None:
                end_process(e.code or 0)
            print(e.code, file=sys.stderr)    # sys.exit("message"): printed, status 1, as Python does
            end_process(1)
        raise


if __name__ == "__main__":
    sys.exit(main())
