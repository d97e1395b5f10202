"""The QA report flow: a self-contained HTML report and a Parquet QA table of a run (or of the
latest attempt of every item), compared with an earlier run by time travel."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from catalogs.delta import DeltaTables
from catalogs.runs import RunLog, new_run_id
from catalogs.settings import Settings
from catalogs.storage import Storage
from flows.dubbing import flow_settings
from tasks.qa_report import QaReport, build_report


@task(name="build-report", cache_policy=NO_CACHE)
def build(settings: Settings, output: str, run: str | None, compare: str | None) -> QaReport:
    return build_report(Storage(settings), settings, output, run, compare)


@flow(name="qa_report")
def qa_report(root: str | None = None, run: str | None = None, compare: str | None = None,
              output: str | None = None) -> QaReport:
    """Write the QA report (default ROOT/reports/{qa run id}.html) and its Parquet table beside it."""
    settings = flow_settings(root=root)
    storage = Storage(settings)
    runs = RunLog(DeltaTables(storage))
    for asked in (run, compare):          # a typo would report on nothing and pass (deployments skip the CLI's check)
        if asked and runs.get(asked) is None:
            raise KeyError(f"run {asked!r} is not in manifests/runs")
    run_id = runs.start("qa", {"run": run, "compare": compare}, new_run_id("qa"))
    output = output or storage.uri("reports", f"{run_id}.html")
    report = build(settings, output, run, compare)
    runs.finish(run_id, "succeeded", report.items, report.succeeded, report.failed)
    create_link_artifact(output, link_text="QA report (HTML)", key="qa-report", description=f"QA of {run or 'latest attempts'}")
    create_link_artifact(report.table_uri, link_text="QA table (Parquet)", key="qa-table")
    create_markdown_artifact(
        f"# QA {run or 'latest attempts'}\n\n| items | succeeded | failed | need review | regressed | fixed |\n"
        f"|---|---|---|---|---|---|\n| {report.items} | {report.succeeded} | {report.failed} | {report.needs_review} | "
        f"{len(report.regressed)} | {len(report.fixed)} |\n\nReport: `{output}`", key="qa-summary")
    get_run_logger().info("QA report: %s (%d items, %d need review)", output, report.items, report.needs_review)
    return report
