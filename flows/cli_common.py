"""What every ``resync`` command shares: consoles, common options, settings from flags, failing."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import suppress
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from catalogs.delta import DeltaTables
from catalogs.schemas import VIDEOS_TABLE
from catalogs.settings import Settings

console = Console(stderr=True)
out = Console()

RootOpt = typer.Option(None, "--root", help="Storage root: a local path or s3://bucket/prefix. Env: RESYNC_ROOT. Default ./resync-data.")
AllowOpt = typer.Option(None, "--allow-root", help="A root that catalog URIs may point into (repeatable). Env: RESYNC_ALLOWED_ROOTS as a JSON list. Default: the current directory.")
EndpointOpt = typer.Option(None, "--s3-endpoint-url", help="S3 endpoint URL, e.g. http://127.0.0.1:9000. Env: RESYNC_S3_ENDPOINT_URL or AWS_ENDPOINT_URL. Credentials come only from AWS_* variables.")


def make_settings(root: str | None = None, allow_root: list[str] | None = None, s3_endpoint_url: str | None = None,
                  **extra) -> Settings:
    """Settings from the environment, with CLI flags (when given) taking precedence."""
    overrides = {k: v for k, v in {"root": root, "allowed_roots": allow_root or None,
                                   "s3_endpoint_url": s3_endpoint_url, **extra}.items() if v is not None}
    return Settings(**overrides)


_skip_teardown = False


def skip_teardown() -> None:
    """Say that this command has finished everything it started: no server, cluster, child process or
    temporary file is left for an exit handler. ``main`` then ends the process without Python's
    interpreter teardown, which after a dub takes 0.6-0.9 s (torch's and the loaded libraries'
    finalizers) of a command that has already published its output."""
    global _skip_teardown
    _skip_teardown = True


def teardown_skipped() -> bool:
    return _skip_teardown


def end_process(code: int) -> NoReturn:
    """Flush what the command printed and logged, then end the process at once (``os._exit``)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):    # a closed or broken pipe: nothing left to flush to
            stream.flush()
    os._exit(code)


def fail(msg: str, code: int = 1) -> None:
    """Print ``msg`` (literally: an error class in brackets is not Rich markup) and exit with ``code``."""
    console.print(f"[red]error:[/red] {escape(msg)}")
    raise typer.Exit(code)


def require_catalog(tables: DeltaTables) -> None:
    """Refuse (exit 2) a root that holds no catalog: opening a table creates it, so a mistyped
    ``--root`` would otherwise become a fresh, empty catalog that reports nothing. Only ingest
    creates one."""
    if not tables.exists(VIDEOS_TABLE):
        fail(f"no catalog at {tables.storage.root} (no {VIDEOS_TABLE} table): check --root / RESYNC_ROOT; "
             "`resync catalog ingest` creates a catalog", 2)


def frame_progress() -> Progress:
    """A transient progress bar counting frames (or any units) of one long step."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console, transient=True)
