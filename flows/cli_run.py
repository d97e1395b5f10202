"""``resync run nightly|reprocess|finetune|train|qa``: the orchestrated jobs (Prefect flows fanning out Ray actors).

Exit codes: 0 the run completed and every item succeeded; 1 the run could not complete (a shard
failed after its retries, storage or cluster unreachable, a training job failed); 2 bad usage;
3 the run completed but some items failed (each is a manifest row with its error class).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from catalogs.delta import DeltaTables
from catalogs.errors import ErrorClass, ResyncError
from catalogs.runs import RunLog
from catalogs.schemas import RUNS_TABLE
from catalogs.settings import Settings
from catalogs.storage import Storage
from flows.cli_common import AllowOpt, EndpointOpt, RootOpt, console, fail, make_settings, out, require_catalog

run_app = typer.Typer(help="Orchestrated runs: Prefect flows that fan items out to Ray actor pools and commit "
                      "versioned manifests.", no_args_is_help=True)

RayOpt = typer.Option(None, "--ray-address", help="Ray cluster to join (ray://head:10001). Env: RESYNC_RAY_ADDRESS. "
                      "Default: an embedded local cluster bound to 127.0.0.1.")
PrefectOpt = typer.Option(None, "--prefect-api-url", help="Prefect API (http://127.0.0.1:4200/api). Env: RESYNC_PREFECT_API_URL, "
                          "else Prefect's own PREFECT_API_URL. Default: Prefect's ephemeral API.")
JsonOpt = typer.Option(False, "--json", help="Print the run summary as JSON instead of a table.")


def _environment(root: str | None, allow_root: list[str] | None, s3_endpoint_url: str | None,
                 ray_address: str | None, prefect_api_url: str | None, **extra) -> Settings:
    """Flags become the environment the flows (and the Ray workers this process starts) read."""
    settings = make_settings(root, allow_root, s3_endpoint_url, **({"ray_address": ray_address} if ray_address else {}),
                             **({"prefect_api_url": prefect_api_url} if prefect_api_url else {}),
                             **{k: v for k, v in extra.items() if v is not None})
    for name in ("root", "s3_endpoint_url", "ray_address", "prefect_api_url", *extra):
        value = getattr(settings, name)
        if value is not None:
            os.environ[f"RESYNC_{name.upper()}"] = str(value)
    os.environ["RESYNC_ALLOWED_ROOTS"] = json.dumps(settings.allowed_roots)
    if settings.prefect_api_url:          # Prefect reads its API URL when first imported: after this
        os.environ["PREFECT_API_URL"] = settings.prefect_api_url
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if settings.ray_address:
        # Before the flow starts: a wrong address or token then costs seconds, not a planned run.
        from infra.ray_connect import ClusterConnectionError, check_cluster

        try:
            check_cluster(settings)
        except ClusterConnectionError as e:
            fail(str(e))
    return settings


def _check_inputs(settings: Settings, runs: tuple[str | None, ...] = (), error_class: str | None = None) -> None:
    """Refuse (exit 2), before any flow starts, what would otherwise select nothing and exit 0 as if
    done: a root without a catalog, an error class outside the closed set, a run id never recorded."""
    tables = DeltaTables(Storage(settings))
    require_catalog(tables)
    if error_class is not None and error_class not in {str(c) for c in ErrorClass}:
        fail(f"unknown error class {error_class!r}; the classes are: {', '.join(str(c) for c in ErrorClass)}", 2)
    known = None
    for run in runs:
        if run is None:
            continue
        log = RunLog(tables)
        if log.get(run) is None:
            known = known if known is not None else [r["run_id"] for r in log.all()][-5:]
            fail(f"unknown run {run!r}: no such run in {tables.uri(RUNS_TABLE)}"
                 + (f"; the latest are: {', '.join(known)}" if known else " (it has none)"), 2)


def _progress() -> tuple[Progress, Callable[[str, dict], None]]:
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), console=console)
    task = bar.add_task("planning", total=None, failed=0)

    def listen(event: str, payload: dict) -> None:
        if event == "planned":
            bar.update(task, description="dubbing", total=payload["items"])
        elif event == "item":
            failed = bar.tasks[task].fields["failed"] + (payload["status"] == "failed")
            bar.update(task, advance=1, failed=failed)
    return bar, listen


def dubbing_run(flow, as_json: bool, **params) -> None:
    from flows import dubbing

    bar, listen = _progress()
    dubbing.listeners.append(listen)
    try:
        with bar:
            summary = flow(**params)
    except ResyncError as e:    # e.g. the storage failed under the run itself: say so by its class
        fail(f"{e} [{e.error_class}]")
    except Exception as e:  # noqa: BLE001 - the flow's failure is reported, with exit code 1
        fail(f"{type(e).__name__}: {e}")
    finally:
        dubbing.listeners.remove(listen)
        from infra.ray_pools import shutdown
        shutdown()
    if as_json:
        out.print_json(summary.as_json())
    else:
        t = Table(title=f"{summary.kind} run {summary.run_id}: {summary.status}")
        for col in ("planned", "succeeded", "failed", "wall s", "video s", "realtime x", "manifest version"):
            t.add_column(col)
        t.add_row(str(summary.planned), str(summary.succeeded), str(summary.failed), f"{summary.wall_s:.1f}",
                  f"{summary.video_seconds:.1f}", f"{summary.realtime_factor:.2f}", str(summary.manifest_version))
        out.print(t)
        for cls, n in sorted(summary.failures.items()):
            out.print(f"  failed: {n} x {cls}")
    if summary.failed:
        raise typer.Exit(3)


@run_app.command("nightly")
def nightly(
    languages: Optional[list[str]] = typer.Option(None, "--language", help="Only these target languages (repeatable)."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Items per shard (one Prefect task, one manifest commit). Env: RESYNC_SHARD_SIZE."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Dub at most this many pending items (the first in plan order)."),
    root: Optional[str] = RootOpt, allow_root: Optional[list[str]] = AllowOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
    ray_address: Optional[str] = RayOpt, prefect_api_url: Optional[str] = PrefectOpt, as_json: bool = JsonOpt,
) -> None:
    """Dub every (video, language) whose inputs (video, audio, models, render config) have no success yet."""
    _check_inputs(_environment(root, allow_root, s3_endpoint_url, ray_address, prefect_api_url, shard_size=shard_size))
    from flows.nightly import nightly_localization

    dubbing_run(nightly_localization, as_json, languages=languages or None, limit=limit)


@run_app.command("reprocess")
def reprocess(
    run: Optional[str] = typer.Option(None, "--run", help="Only items that failed in this run id."),
    error_class: Optional[str] = typer.Option(None, "--error-class", help="Only items whose latest failure has this class (e.g. audio_decode_error)."),
    language: Optional[str] = typer.Option(None, "--language", help="Only items of this target language."),
    root: Optional[str] = RootOpt, allow_root: Optional[list[str]] = AllowOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
    ray_address: Optional[str] = RayOpt, prefect_api_url: Optional[str] = PrefectOpt, as_json: bool = JsonOpt,
) -> None:
    """Dub again exactly the items whose latest attempt failed (files behind them are re-probed first)."""
    _check_inputs(_environment(root, allow_root, s3_endpoint_url, ray_address, prefect_api_url), (run,), error_class)
    from flows.reprocess import reprocess_failed

    dubbing_run(reprocess_failed, as_json, run=run, error_class=error_class, language=language)


def _training_run(flow, as_json: bool, **params) -> None:
    try:
        with console.status(f"{flow.name}: training (see the Prefect logs for progress)"):
            record = flow(**params)
    except ValueError as e:
        fail(str(e), 2)
    except Exception as e:  # noqa: BLE001
        fail(f"{type(e).__name__}: {e}")
    finally:
        from infra.ray_pools import shutdown
        shutdown()
    if as_json:
        out.print_json(json.dumps(record, default=str))
        return
    t = Table(title=f"registered model {record['version']}")
    t.add_column("field")
    t.add_column("value", overflow="fold")
    for k in ("model_id", "speaker_id", "version", "parent", "uri", "training_data", "metrics"):
        t.add_row(k, str(record[k]))
    out.print(t)


@run_app.command("finetune")
def finetune(
    speaker_id: str = typer.Option(..., "--speaker", help="Catalog speaker id whose videos are the training footage."),
    syncformer_seconds: Optional[float] = typer.Option(None, "--syncformer-seconds", help="Time budget of the Style-SyncFormer (default 60; 0 leaves it as it is)."),
    generator_seconds: Optional[float] = typer.Option(None, "--generator-seconds", help="Time budget of the generator (default 240; 0 leaves it as it is)."),
    root: Optional[str] = RootOpt, allow_root: Optional[list[str]] = AllowOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
    ray_address: Optional[str] = RayOpt, prefect_api_url: Optional[str] = PrefectOpt, as_json: bool = JsonOpt,
) -> None:
    """Fine-tune a speaker model from the newest base and register it; the next nightly run re-dubs that speaker with it."""
    _check_inputs(_environment(root, allow_root, s3_endpoint_url, ray_address, prefect_api_url))
    from flows.finetune import finetune_speaker

    _training_run(finetune_speaker, as_json, speaker_id=speaker_id, syncformer_seconds=syncformer_seconds,
                  generator_seconds=generator_seconds)


@run_app.command("train")
def train(
    video_ids: Optional[list[str]] = typer.Option(None, "--video", help="Train on these catalog video ids (repeatable); default all."),
    fresh: bool = typer.Option(False, "--fresh", help="Start from random weights instead of continuing the newest base."),
    syncformer_seconds: Optional[float] = typer.Option(None, "--syncformer-seconds", help="Time budget of the Style-SyncFormer (default 240; 0 leaves it as it is)."),
    generator_seconds: Optional[float] = typer.Option(None, "--generator-seconds", help="Time budget of the generator (default 1200; 0 leaves it as it is)."),
    root: Optional[str] = RootOpt, allow_root: Optional[list[str]] = AllowOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
    ray_address: Optional[str] = RayOpt, prefect_api_url: Optional[str] = PrefectOpt, as_json: bool = JsonOpt,
) -> None:
    """Train a base model over the catalog and register it; every item is dubbed again with it next night."""
    _check_inputs(_environment(root, allow_root, s3_endpoint_url, ray_address, prefect_api_url))
    from flows.train import train_base

    _training_run(train_base, as_json, video_ids=video_ids or None, resume=not fresh,
                  syncformer_seconds=syncformer_seconds, generator_seconds=generator_seconds)


@run_app.command("qa")
def qa(
    run: Optional[str] = typer.Option(None, "--run", help="Report on this run's attempts (default: the latest attempt of every item)."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Compare with the manifest as this earlier run left it (time travel)."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Where to write the HTML (local path or s3://); "
                                         "default ROOT/reports/{qa run id}.html. The Parquet QA table goes beside it."),
    root: Optional[str] = RootOpt, allow_root: Optional[list[str]] = AllowOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
    prefect_api_url: Optional[str] = PrefectOpt, as_json: bool = JsonOpt,
) -> None:
    """Write the QA report: outcomes by language and error class, metric distributions against their
    thresholds, the worst items with before/after frames, throughput, and what changed since --compare."""
    _check_inputs(_environment(root, allow_root, s3_endpoint_url, None, prefect_api_url), (run, compare))
    from flows.qa import qa_report

    if output and "://" not in output:
        output = str(Path(output).resolve())
    try:
        report = qa_report(run=run, compare=compare, output=output)
    except KeyError as e:
        fail(f"unknown run: {e}", 2)
    except Exception as e:  # noqa: BLE001
        fail(f"{type(e).__name__}: {e}")
    if as_json:
        out.print_json(json.dumps(report.__dict__))
        return
    out.print(f"QA report: {report.html_uri}\nQA table:  {report.table_uri}")
    out.print(f"{report.items} items: {report.succeeded} succeeded, {report.failed} failed, {report.needs_review} need review"
              + (f"; {len(report.regressed)} regressed, {len(report.fixed)} fixed since {compare}" if compare else ""))
