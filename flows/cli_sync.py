"""``resync sync VIDEO [AUDIO]``: how well any video's mouth matches a speech track, by the sync expert.

The numbers QA writes into every manifest row (``av_offset_frames``, ``av_confidence``,
``av_distance``), for a person checking one file: a source video, a dub, a competitor's output.
Exit codes: 0 judged; 1 the video or audio could not be read; 2 bad usage.
"""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from catalogs.errors import ResyncError
from catalogs.storage import Storage
from flows.cli_common import EndpointOpt, RootOpt, fail, frame_progress, make_settings, out


def sync(
    video: str = typer.Argument(..., help="Video whose mouth to judge: a local path or s3:// URI."),
    audio: Optional[str] = typer.Argument(None, help="Speech to judge it against (any audio or video file); "
                                          "default: the video's own audio track."),
    expert: Optional[str] = typer.Option(None, "--expert", help="Sync expert folder (safetensors + config.json). "
                                         "Env: RESYNC_SYNC_EXPERT_DIR. Default: the bundled one (models/weights/sync-expert)."),
    root: Optional[str] = RootOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
    as_json: bool = typer.Option(False, "--json", help="Print {offset_frames, confidence, distance} as JSON."),
) -> None:
    """Audio-visual sync of VIDEO, as SyncNet reports it.

    offset_frames: where the mouth best matches the speech (positive: the mouth comes after the sound);
    confidence: how much better that offset fits than a typical one (median minus minimum distance; near 0 for a
    mouth that does not follow this speech); distance: the mean embedding distance at that offset (lower is better)."""
    from tasks.audio import load_audio
    from tasks.dub_plan import fit_audio_length, video_duration
    from tasks.sync import judge_sync, load_sync_expert
    from tasks.track import track_video

    settings = make_settings(root, None, s3_endpoint_url)
    storage = Storage(settings)
    try:
        model, version = load_sync_expert(expert or settings.sync_expert_dir)
    except (OSError, ValueError) as e:
        fail(f"cannot load the sync expert: {e}")
    try:
        with frame_progress() as bar:
            task = bar.add_task("tracking", total=None)
            track = track_video(storage, settings, video, lambda done, total: bar.update(task, completed=done, total=total))
        speech = load_audio(storage, audio or video, required=True)
    except ResyncError as e:
        fail(f"{e} [{e.error_class}]")
    score = judge_sync(model, track.raw, track.timestamps, fit_audio_length(speech.samples, video_duration(track)))
    doc = {k: (round(v, 4) if v == v else None) for k, v in score.as_dict().items()}
    if as_json:
        out.print_json(json.dumps(doc))
        return
    t = Table(title=f"sync of {video}" + (f" with {audio}" if audio else ""))
    t.add_column("what")
    t.add_column("value")
    for k, v in {**doc, "expert": version}.items():
        t.add_row(k, str(v))
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("sync")(sync)
