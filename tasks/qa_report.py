"""The catalog QA report: one self-contained HTML file a person reads, and a Parquet table beside it.

Built from the manifest alone (plus a few frames of the worst items): the run's counts by language
and error class, every QA metric's distribution against its threshold, the items that need review
with before/after frame strips, throughput, and what changed since an earlier run (read by time
travel). Plots and frames are embedded as data URIs, so the file opens with no network.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import cv2
import numpy as np
import pandas as pd

from catalogs.delta import DeltaTables
from catalogs.manifest import DubManifest
from catalogs.runs import RunLog
from catalogs.settings import Settings
from catalogs.storage import Storage
from tasks.decode import VideoSource
from tasks.qa import review_reasons

# metric -> (label, threshold setting, "min" when low is bad / "max" when high is bad)
METRICS = {
    "av_offset_frames": ("sync expert: audio-visual offset (frames)", "qa_max_av_offset_frames", "abs"),
    "av_confidence": ("sync expert: confidence (LSE-C)", "qa_min_av_confidence", "min"),
    "av_distance": ("sync expert: distance (LSE-D)", "qa_max_av_distance", "max"),
    "mesh_error_px": ("renderer obedience: mesh error (px, 256 crop)", "qa_max_mesh_error_px", "max"),
    "identity_distance": ("identity distance (dlib)", "qa_max_identity_distance", "max"),
    "sharpness_ratio": ("mouth sharpness vs source", "qa_min_sharpness_ratio", "min"),
    "silence_motion": ("mouth motion in silence vs speech", "qa_max_silence_motion", "max"),
    "face_coverage": ("face coverage", "qa_min_face_coverage", "min"),
    "audio_overhang_s": ("speech past the end (s)", "qa_max_overhang_s", "max"),
    "speech_outside_source_s": ("speech where the speaker is silent (s)", "qa_max_speech_outside_source_s", "max"),
    "wer": ("word error rate vs script", "qa_max_wer", "max"),
}
# Where the report looks: the frames the sync expert found least in sync, and the mouth box around them.
WHERE = [*(f"av_worst_frame_{k}" for k in range(4)), "mouth_x0", "mouth_y0", "mouth_x1", "mouth_y1"]
METRIC_NOTES = """<p>What the numbers mean. <b>Sync</b> (<code>av_*</code>) is the verdict of an independent
audio-visual sync expert (SyncNet-style, <code>models/sync_expert.py</code>, trained on other people) on the
output's own re-tracked mouth and its own audio, nothing the dub planned: <code>av_offset_frames</code> is where
mouth and speech match best (positive: the mouth comes after the sound), <code>av_confidence</code> how much better
that offset fits than a typical one (near 0: the mouth does not follow this speech), <code>av_distance</code> the
embedding distance there (lower is better). <b>Renderer obedience</b> (<code>mesh_error_px</code>) says whether the
mouth drawn is the mouth planned; a dub can obey its plan and still be out of sync.</p>"""


@dataclass
class QaReport:
    html_uri: str
    table_uri: str
    run_id: str | None
    items: int
    succeeded: int
    failed: int
    needs_review: int
    regressed: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)


def latest_attempts(manifest: DubManifest, run_id: str | None, version: int | None = None) -> pd.DataFrame:
    """The attempts a report is about: those of ``run_id``, else the latest per item (at ``version``)."""
    df = manifest.latest(version) if run_id is None else manifest.rows(version).to_pandas()
    if run_id is not None:
        df = df[df["run_id"] == run_id].sort_values(["created_at", "attempt"]).drop_duplicates(
            ["video_id", "language"], keep="last")
    return df.reset_index(drop=True)


def qa_table(settings: Settings, attempts: pd.DataFrame) -> pd.DataFrame:
    """One row per item: status, error, every QA metric as a column, ``needs_review`` and why."""
    rows = []
    for r in attempts.to_dict("records"):
        qa = dict(r.get("qa") or [])
        reasons = review_reasons(settings, qa) if r["status"] == "succeeded" else []
        if r["status"] == "succeeded" and qa.get("qa_missing"):   # a reused output nobody measured
            reasons.append("qa_missing: output reused from an attempt that never recorded its QA metrics")
        rows.append({"video_id": r["video_id"], "language": r["language"], "run_id": r["run_id"], "attempt": r["attempt"],
                     "status": r["status"], "error_class": r["error_class"], "error": r["error"],
                     "output_uri": r["output_uri"], "input_key": r["input_key"],
                     "model_version": r["speaker_model_version"] or r["base_model_version"],
                     "seconds": float(dict(r.get("stage_seconds") or []).get("total_s", np.nan)),
                     **{m: float(qa[m]) if m in qa else np.nan for m in [*METRICS, *WHERE]},
                     "video_seconds": float(qa.get("video_seconds", np.nan)),
                     "needs_review": bool(reasons), "review_reasons": "; ".join(reasons)})
    cols = ["video_id", "language", "run_id", "attempt", "status", "error_class", "error", "output_uri", "input_key",
            "model_version", "seconds", *METRICS, *WHERE, "video_seconds", "needs_review", "review_reasons"]
    return pd.DataFrame(rows, columns=cols)


def compare(now: pd.DataFrame, then: pd.DataFrame) -> pd.DataFrame:
    """Per item present in both: status then and now, and the change of each metric."""
    j = now.merge(then, on=["video_id", "language"], suffixes=("", "_then"))
    j["change"] = np.select([(j.status_then == "succeeded") & (j.status == "failed"),
                             (j.status_then == "failed") & (j.status == "succeeded"),
                             ~j.needs_review_then & j.needs_review, j.needs_review_then & ~j.needs_review],
                            ["regressed", "fixed", "now needs review", "review cleared"], "")
    return j


# --- rendering --------------------------------------------------------------------------------


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def metric_plots(settings: Settings, table: pd.DataFrame) -> list[tuple[str, str]]:
    """(title, PNG data URI) per metric that has values: its histogram and its threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    for metric, (label, setting, kind) in METRICS.items():
        values = table[metric].dropna().to_numpy()
        if values.size == 0:
            continue
        fig, ax = plt.subplots(figsize=(3.6, 2.2))
        limit = getattr(settings, setting)
        lines = [limit, -limit] if kind == "abs" else [limit]
        lo, hi = min(values.min(), *lines), max(values.max(), *lines)
        ax.hist(values, bins=20, range=(lo, hi if hi > lo else lo + 1), color="#4c78a8")
        for x in lines:
            ax.axvline(x, color="#e45756", linestyle="--", linewidth=1)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        plots.append((label, _png(fig)))
        plt.close(fig)
    return plots


def frame_strip(storage: Storage, uri: str, count: int = 4, height: int = 96) -> str | None:
    """A JPEG data URI of ``count`` frames spread over the video, side by side (None if unreadable)."""
    try:
        with VideoSource(storage, uri) as video:
            n = video.n_frames
            frames = [video.frame(int(i)) for i in np.linspace(0, n - 1, count + 2)[1:-1].round()]
    except Exception:  # noqa: BLE001 - a missing or broken file shows as "unavailable", not a failed report
        return None
    scaled = [cv2.resize(f, (max(1, int(f.shape[1] * height / f.shape[0])), height), interpolation=cv2.INTER_AREA)
              for f in frames]
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(np.concatenate(scaled, 1), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return "data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode() if ok else None


def mouth_strip(storage: Storage, uri: str, frames: list[int], box: tuple[float, float, float, float],
                height: int = 128) -> str | None:
    """A JPEG data URI of the mouth box of each of ``frames``, side by side (None if unreadable): the
    mouth at a size a person can judge, where whole frames make it a few pixels."""
    try:
        with VideoSource(storage, uri) as video:
            images = [video.frame(int(i)) for i in frames if 0 <= i < video.n_frames]
    except Exception:  # noqa: BLE001 - a missing or broken file shows as "unavailable", not a failed report
        return None
    if not images:
        return None
    crops = []
    for f in images:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, f.shape[1]), min(y1, f.shape[0])
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        crop = f[y0:y1, x0:x1]
        crops.append(cv2.resize(crop, (max(1, int(crop.shape[1] * height / crop.shape[0])), height),
                                interpolation=cv2.INTER_CUBIC))
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(np.concatenate(crops, 1), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode() if ok else None


def _strips(storage: Storage, source: str, output: str, r: dict) -> tuple[str | None, str | None, str]:
    """(source, dub, caption): mouth crops at the least-in-sync frames when QA recorded them, else whole frames."""
    frames = [int(r[f"av_worst_frame_{k}"]) for k in range(4) if np.isfinite(r.get(f"av_worst_frame_{k}", np.nan))]
    box = tuple(r.get(k, np.nan) for k in ("mouth_x0", "mouth_y0", "mouth_x1", "mouth_y1"))
    if frames and all(np.isfinite(box)):
        return (mouth_strip(storage, source, frames, box), mouth_strip(storage, output, frames, box),
                f"mouth at the frames the sync expert finds least in sync ({', '.join(map(str, frames))})")
    return frame_strip(storage, source), frame_strip(storage, output), "frames spread over the video"


def _table(df: pd.DataFrame, columns: list[str], fmt: dict[str, str] | None = None) -> str:
    fmt = fmt or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in df[columns].to_dict("records"):
        cells = []
        for c in columns:
            v = r[c]
            text = "" if v is None or (isinstance(v, float) and np.isnan(v)) else (fmt.get(c, "{}").format(v))
            cells.append(f"<td>{html.escape(str(text))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:10px 16px}
.card b{display:block;font-size:24px}.bad{color:#c0392b}.good{color:#1e8449}.plots{display:flex;flex-wrap:wrap;gap:8px}
.item{border:1px solid #eee;padding:8px;margin:8px 0}.strip img{max-width:100%;display:block;margin:2px 0}"""


def personalized_models(runs: list[dict]) -> pd.DataFrame:
    """The speaker models nightly runs fine-tuned before dubbing, and their cost, from the runs' records."""
    rows = []
    for r in runs:
        if r["kind"] == "nightly":
            for entry in json.loads(r["parameters"] or "{}").get("personalized", []):
                rows.append({"run_id": r["run_id"], "version": None, "error": None, **entry})
    return pd.DataFrame(rows, columns=["run_id", "speaker_id", "videos", "footage_s", "version", "seconds", "error"])


def render_html(settings: Settings, storage: Storage, table: pd.DataFrame, run: dict | None, comparison: pd.DataFrame | None,
                compare_run: str | None, title: str, personalized: pd.DataFrame | None = None) -> str:
    personalized = personalized if personalized is not None else personalized_models([])
    ok = table[table.status == "succeeded"]
    failed = table[table.status == "failed"]
    review = ok[ok.needs_review]
    cards = [("items", len(table), ""), ("succeeded", len(ok), "good"), ("failed", len(failed), "bad" if len(failed) else ""),
             ("need review", len(review), "bad" if len(review) else "")]
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from <code>{html.escape(storage.uri('manifests', 'dubs'))}</code>.</p>",
             '<section id="summary"><h2>Run summary</h2><div class="cards">'
             + "".join(f'<div class="card {c}"><b>{v}</b>{k}</div>' for k, v, c in cards) + "</div>"]
    if run:
        parts.append(_table(pd.DataFrame([run]), ["run_id", "kind", "status", "started_at", "ended_at", "planned",
                                                   "succeeded", "failed"]))
    parts.append("</section>")

    by_lang = table.groupby("language").agg(items=("status", "size"), succeeded=("status", lambda s: int((s == "succeeded").sum())),
                                            failed=("status", lambda s: int((s == "failed").sum())),
                                            needs_review=("needs_review", "sum")).reset_index()
    parts.append('<section id="failures"><h2>Outcomes by language and error class</h2>'
                 + _table(by_lang, ["language", "items", "succeeded", "failed", "needs_review"]))
    if len(failed):
        by_class = failed.groupby("error_class").size().reset_index(name="items").sort_values("items", ascending=False)
        parts.append(_table(by_class, ["error_class", "items"]))
        parts.append(_table(failed, ["video_id", "language", "error_class", "error", "attempt"]))
    parts.append("</section>")

    plots = metric_plots(settings, ok)
    parts.append('<section id="metrics"><h2>QA metrics</h2>' + METRIC_NOTES + '<p>Dashed lines: the review thresholds (settings '
                 '<code>qa_*</code>).</p><div class="plots">'
                 + "".join(f'<img alt="{html.escape(t)}" src="{u}">' for t, u in plots) + "</div></section>")

    worst = ok.assign(n=ok.review_reasons.str.count(";") + ok.needs_review.astype(int)).sort_values(
        ["n", "av_confidence"], ascending=[False, True]).head(settings.qa_worst_items)
    parts.append(f'<section id="worst"><h2>Items to look at ({len(review)} need review; the worst {len(worst)} shown)</h2>')
    sources = _sources(storage, worst)
    for r in worst.to_dict("records"):
        before, after, caption = _strips(storage, sources.get(r["video_id"], ""), r["output_uri"], r)
        metrics = ", ".join(f"{m} {r[m]:.2f}" for m in METRICS if np.isfinite(r[m]))
        parts.append(f'<div class="item"><b>{html.escape(r["video_id"])} &rarr; {html.escape(r["language"])}</b> '
                     f'<span class="bad">{html.escape(r["review_reasons"] or "no threshold crossed")}</span>'
                     f'<div>{html.escape(metrics)}</div><div class="strip"><small>{html.escape(caption)}</small>'
                     + (f'<small>source</small><img alt="source frames" src="{before}">' if before else "<p>source unavailable</p>")
                     + (f'<small>dubbed</small><img alt="dubbed frames" src="{after}">' if after else "<p>output unavailable</p>")
                     + "</div></div>")
    parts.append("</section>")

    secs, vsec = ok.seconds.sum(), ok.video_seconds.sum()
    parts.append('<section id="throughput"><h2>Throughput</h2>'
                 f"<p>{len(ok)} dubs, {vsec:.0f} s of video in {secs:.0f} s of worker time "
                 f"({(vsec / secs if secs else 0):.2f} video seconds per worker second).</p>")
    if len(personalized):
        parts.append(f"<p>Speaker models fine-tuned by nightly runs before dubbing (setting "
                     f"<code>personalize_min_footage_s</code>): {len(personalized)}, "
                     f"{personalized.seconds.sum():.0f} s in all.</p>"
                     + _table(personalized, ["run_id", "speaker_id", "videos", "footage_s", "version", "seconds", "error"],
                              {"seconds": "{:.0f}", "footage_s": "{:.1f}"}))
    parts.append("</section>")

    parts.append('<section id="comparison"><h2>Compared with an earlier run</h2>')
    if comparison is None:
        parts.append("<p>No comparison requested (<code>--compare RUN_ID</code>).</p>")
    else:
        changed = comparison[comparison.change != ""]
        parts.append(f"<p>Against run <code>{html.escape(compare_run or '')}</code> (the manifest as that run left it): "
                     f"{int((comparison.change == 'regressed').sum())} regressed, {int((comparison.change == 'fixed').sum())} "
                     f"fixed, {len(comparison)} items in both.</p>")
        if len(changed):
            parts.append(_table(changed, ["video_id", "language", "change", "status_then", "status", "av_confidence_then",
                                          "av_confidence"], {"av_confidence_then": "{:.2f}", "av_confidence": "{:.2f}"}))
    parts.append("</section>")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")


def _sources(storage: Storage, items: pd.DataFrame) -> dict[str, str]:
    from catalogs.schemas import VIDEOS_TABLE

    videos = DeltaTables(storage).read(VIDEOS_TABLE, columns=["video_id", "uri"]).to_pylist()
    return {v["video_id"]: v["uri"] for v in videos if v["video_id"] in set(items.video_id)}


def build_report(storage: Storage, settings: Settings, output_uri: str, run_id: str | None = None,
                 compare_run: str | None = None) -> QaReport:
    """Write the HTML report to ``output_uri`` and its QA table beside it (``.parquet``)."""
    tables = DeltaTables(storage)
    manifest = DubManifest(tables)
    table = qa_table(settings, latest_attempts(manifest, run_id))
    comparison = None
    if compare_run:
        version = manifest.version_of_run(compare_run)
        if version is None:
            raise KeyError(f"run {compare_run} committed nothing to the manifest")
        then = qa_table(settings, latest_attempts(manifest, None, version))
        comparison = compare(table, then)
    run = RunLog(tables).get(run_id) if run_id else None
    title = f"resync QA: run {run_id}" if run_id else "resync QA: latest attempt of every item"
    personalized = personalized_models([run] if run else RunLog(tables).all())
    page = render_html(settings, storage, table, run, comparison, compare_run, title, personalized)
    table_uri = output_uri.rsplit(".", 1)[0] + ".parquet"
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    storage.write_bytes(table_uri, buf.getvalue())
    storage.write_bytes(output_uri, page.encode())
    key = lambda d: [f"{a}/{b}" for a, b in zip(d.video_id, d.language)]  # noqa: E731
    return QaReport(output_uri, table_uri, run_id, len(table), int((table.status == "succeeded").sum()),
                    int((table.status == "failed").sum()), int(table.needs_review.sum()),
                    key(comparison[comparison.change == "regressed"]) if comparison is not None else [],
                    key(comparison[comparison.change == "fixed"]) if comparison is not None else [])


__all__ = ["QaReport", "build_report", "qa_table", "compare", "latest_attempts", "METRICS"]
