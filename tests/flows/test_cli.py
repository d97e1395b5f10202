"""The ``resync`` CLI: catalog commands, their exit codes and their help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.catalogs.test_ingest import write_csv

runner = CliRunner()


def test_help_for_every_command():
    for args in ([], ["catalog"], ["catalog", "ingest"], ["catalog", "show"], ["catalog", "plan"], ["catalog", "maintain"]):
        r = runner.invoke(app, [*args, "--help"])
        assert r.exit_code == 0, r.output
        assert "Usage" in r.output
    # the installed entry point works too
    out = subprocess.run([str(Path(sys.executable).parent / "resync"), "catalog", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "ingest" in out.stdout


@pytest.mark.parametrize("skip", [False, True])
def test_a_command_that_finished_everything_ends_without_teardown_and_keeps_its_output(tmp_path, skip):
    """``resync dub`` ends the process once its output is flushed (skipping 0.6-0.9 s of interpreter
    teardown); exit handlers still run for every other command, and exit codes and messages are kept."""
    mark = tmp_path / "atexit-ran"
    script = f"""
import atexit, sys
from flows import cli, cli_common
atexit.register(lambda: open({str(mark)!r}, "w").close())
if {skip}:
    cli_common.skip_teardown()
sys.argv = ["resync", *sys.argv[1:]]
cli.main()
"""
    repo = Path(__file__).resolve().parents[2]
    ok = subprocess.run([sys.executable, "-c", script, "catalog", "--help"], cwd=repo, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and "ingest" in ok.stdout
    assert mark.exists() != skip
    mark.unlink(missing_ok=True)
    bad = subprocess.run([sys.executable, "-c", script, "dub"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Missing argument" in bad.stderr
    assert mark.exists() != skip


def test_ingest_show_plan(tmp_path: Path, shared_data: Path):
    root = str(tmp_path / "root")
    videos = write_csv(tmp_path / "v.csv", ["video_id", "uri", "speaker_id"], [
        ["map", str(shared_data / "videos" / "speaker_map_5s.mp4"), "man"],
        ["ghost", str(tmp_path / "nothing.mp4"), "man"],
    ])
    requests = write_csv(tmp_path / "r.csv", ["video_id", "language", "audio_uri"], [
        ["map", "fr", str(shared_data / "audio" / "french1.wav")],
        ["map", "de", str(shared_data / "audio" / "german1.wav")],
    ])
    allow = ["--allow-root", str(shared_data), "--allow-root", str(tmp_path)]
    r = runner.invoke(app, ["catalog", "ingest", "--root", root, "--videos", videos, "--requests", requests, *allow])
    assert r.exit_code == 0, r.output
    assert "missing_file" in r.output and "ghost" in r.output
    r = runner.invoke(app, ["catalog", "ingest", "--root", root, "--videos", videos, *allow, "--strict"])
    assert r.exit_code == 3

    r = runner.invoke(app, ["catalog", "show", "--root", root, "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert shown["videos"] == 1 and shown["requests_by_language"] == {"de": 1, "fr": 1}
    assert [x["item"] for x in shown["rejects"]] == ["ghost"]
    r = runner.invoke(app, ["catalog", "show", "--root", root])
    assert r.exit_code == 0 and "bad rows" in r.output

    r = runner.invoke(app, ["catalog", "plan", "--root", root, "--json", "--shard-size", "1"])
    assert r.exit_code == 0, r.output
    shards = json.loads(r.output)
    assert [[i["language"] for i in s["items"]] for s in shards] == [["de"], ["fr"]]
    r = runner.invoke(app, ["catalog", "plan", "--root", root, "--languages", "fr"])
    assert r.exit_code == 0 and "1 pending items in 1 shards" in r.output

    r = runner.invoke(app, ["catalog", "maintain", "--root", root])
    assert r.exit_code == 0 and "manifests/dubs" in r.output, r.output
    r = runner.invoke(app, ["catalog", "show", "--root", root, "--json"])
    assert json.loads(r.output)["videos"] == 1  # same content after compaction


@pytest.mark.parametrize("args,code", [
    (["catalog", "ingest", "--root", "{tmp}/root"], 2),                      # nothing to ingest
    (["catalog", "ingest", "--root", "{tmp}/root", "--videos", "{tmp}/nope/v.csv"], 1),  # listing missing
    (["catalog", "plan", "--shard-size", "0"], 2),
])
def test_exit_codes(args, code, tmp_path):
    r = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == code, r.output


@pytest.mark.parametrize("command", [["catalog", "show"], ["catalog", "show", "--json"], ["catalog", "plan"],
                                     ["catalog", "maintain"]])
def test_read_commands_refuse_a_root_without_a_catalog(command, tmp_path):
    """A mistyped --root is an error naming the root, and it stays untouched: only ingest creates a catalog."""
    root = tmp_path / "typo"
    r = runner.invoke(app, [*command, "--root", str(root)])
    assert r.exit_code == 2, r.output
    assert "no catalog" in r.output and "typo" in r.output
    assert not root.exists()


@pytest.fixture
def catalog_root(tmp_path: Path):
    """A storage root with a catalog and one recorded run (no media: these commands refuse before any)."""
    from catalogs.delta import DeltaTables
    from catalogs.runs import RunLog
    from catalogs.schemas import TABLES
    from catalogs.settings import Settings
    from catalogs.storage import Storage

    tables = DeltaTables(Storage(Settings(root=str(tmp_path / "root"))))
    for name in TABLES:
        tables.ensure(name)
    run_id = RunLog(tables).start("nightly", {})
    with mock.patch.dict(os.environ):         # `resync run` exports its flags to the environment
        yield str(tmp_path / "root"), run_id


@pytest.mark.parametrize("args,needle", [
    (["run", "reprocess", "--error-class", "typo"], "error class 'typo'"),
    (["run", "reprocess", "--run", "typo"], "run 'typo'"),
    (["run", "qa", "--run", "typo"], "run 'typo'"),
    (["run", "qa", "--compare", "typo"], "run 'typo'"),
])
def test_runs_refuse_an_unknown_run_or_error_class(args, needle, catalog_root):
    root, known = catalog_root
    r = runner.invoke(app, [*args, "--root", root])
    assert r.exit_code == 2, r.output
    assert needle in r.output, r.output
    if "--error-class" in args:
        assert "audio_decode_error" in r.output       # the valid classes are listed
    else:
        assert known in r.output                      # and the runs there are


@pytest.mark.parametrize("env,flag,expected", [
    ({"RESYNC_PREFECT_API_URL": "http://127.0.0.1:4301/api"}, None, "http://127.0.0.1:4301/api"),
    ({"RESYNC_PREFECT_API_URL": "http://127.0.0.1:4301/api"}, "http://127.0.0.1:4302/api", "http://127.0.0.1:4302/api"),
    ({"PREFECT_API_URL": "http://127.0.0.1:4303/api"}, None, "http://127.0.0.1:4303/api"),   # Prefect's own stays
])
def test_the_prefect_api_url_setting_is_the_api_the_flows_use(env, flag, expected, tmp_path):
    """RESYNC_PREFECT_API_URL (or --prefect-api-url, which beats it) is the API Prefect connects to
    when `resync run` starts a flow: checked with Prefect's own settings, in a fresh process."""
    code = ("import sys; from flows.cli_run import _environment; "
            f"_environment({str(tmp_path)!r}, None, None, None, {flag!r}); "
            "from prefect.settings import get_current_settings; print(get_current_settings().api.url)")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RESYNC_"))}
    proc = subprocess.run([sys.executable, "-c", code], env={**base, **env, "PYTHONPATH": str(Path(__file__).parents[2])},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == expected


def test_an_ingest_during_a_storage_outage_fails_instead_of_rejecting_every_row(tmp_path):
    """The media's S3 endpoint is down (nothing listens on its port): that is a fatal storage error
    (exit 1, naming the endpoint's failure), not a catalog of bad rows."""
    import socket

    with socket.socket() as s:             # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    videos = write_csv(tmp_path / "v.csv", ["video_id", "uri", "speaker_id"],
                       [["a", "s3://media/a.mp4", "x"], ["b", "s3://media/b.mp4", "y"]])
    root = tmp_path / "root"
    with mock.patch.dict(os.environ, {"RESYNC_S3_RETRIES": "0"}):
        r = runner.invoke(app, ["catalog", "ingest", "--root", str(root), "--videos", videos, "--allow-root", "s3://media",
                                "--s3-endpoint-url", f"http://127.0.0.1:{port}"])
    assert r.exit_code == 1, r.output
    assert "storage_error" in r.output and "s3://media/" in r.output
    from catalogs.delta import DeltaTables
    from catalogs.schemas import REJECTS_TABLE
    from catalogs.settings import Settings
    from catalogs.storage import Storage
    assert DeltaTables(Storage(Settings(root=str(root)))).read(REJECTS_TABLE).num_rows == 0   # no row blamed
