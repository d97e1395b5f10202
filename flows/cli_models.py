"""``resync dub`` (one video, one audio track) and ``resync model train-base|finetune|train-sync``.

The single-item path the nightly flow shares: the same tasks, called directly, with a progress
bar. Exit codes: 0 done; 1 the item failed (the message names the error class); 2 bad usage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from catalogs.errors import ResyncError
from catalogs.storage import Storage
from flows.cli_common import EndpointOpt, RootOpt, console, fail, frame_progress, make_settings, out, skip_teardown

model_app = typer.Typer(help="Train and fine-tune ReSyncer models.", no_args_is_help=True)
ModelOpt = typer.Option(None, "--model", help="Model folder (safetensors + config.json). Env: RESYNC_MODEL_DIR. "
                        "Default: the bundled cpu base model (models/weights/base-cpu).")
FeaturesOpt = typer.Option(None, "--audio-features", help="Audio features: whisper (default; the bundled Whisper tiny.en "
                           "encoder unless RESYNC_AUDIO_FEATURE_MODEL_DIR says otherwise), logmel, or hf. Env: RESYNC_AUDIO_FEATURES.")


def dub(
    video: str = typer.Argument(..., help="Video to dub: a local path or s3:// URI. Never modified."),
    audio: Optional[str] = typer.Argument(None, help="The new (translated) speech: any audio or video file with an "
                                          "audio stream. Optional with --driving-video (then its own audio is used)."),
    output: str = typer.Option(..., "-o", "--output", help="Where to write the dubbed H.264 MP4 (published only when complete)."),
    driving_video: Optional[str] = typer.Option(None, "--driving-video", help="Video-driven lip sync: the mouth follows "
                                                "this video's tracked motion, retargeted to this speaker."),
    style_from: Optional[str] = typer.Option(None, "--style-from", help="Speaking-style transfer: a catalog speaker id "
                                             "or a video whose speaker's mouth dynamics to speak with."),
    reference_from: Optional[str] = typer.Option(None, "--reference-from", help="Face swapping: an image or video of "
                                                 "the person to show; the whole face is redrawn from their face (texture moved "
                                                 "onto the mesh, appearance codes, face shape) with this video's pose, motion, "
                                                 "light and background."),
    model: Optional[str] = ModelOpt,
    track_file: Optional[str] = typer.Option(None, "--track", help="Reuse a track artifact written by `resync track` "
                                             "instead of tracking again."),
    detail: Optional[bool] = typer.Option(None, "--detail/--no-detail", help="Keep the frame's own skin and lip texture "
                                          "on the redrawn mouth, moved with the mesh (default on; never when swapping "
                                          "faces). Env: RESYNC_DETAIL_TRANSFER."),
    teeth: Optional[bool] = typer.Option(None, "--teeth/--no-teeth", help="Show the speaker's own teeth in the drawn "
                                         "mouth: the inside of one of this video's open mouths, each row moved with its "
                                         "lip (default off, see README; needs --detail; never when swapping faces). Env: "
                                         "RESYNC_MOUTH_INTERIOR."),
    still_pauses: Optional[bool] = typer.Option(None, "--still-pauses/--no-still-pauses", help="In the pauses of the new "
                                                "speech, draw one still mouth at rest moved with the head, instead of "
                                                "drawing the resting mouth afresh every frame (default on). Env: "
                                                "RESYNC_REST_MOUTH."),
    readout: Optional[float] = typer.Option(None, "--readout", min=0.0, max=1.0, help="With a model that carries a "
                                            "linear read-out of the audio (train-base --readout-components; the bundled "
                                            "base does not), the share of the mouth motion taken from it instead of the "
                                            "Style-SyncFormer (default 0.5). Env: RESYNC_READOUT_WEIGHT."),
    root: Optional[str] = RootOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
) -> None:
    """Lip-sync VIDEO to AUDIO: same frames, frame rate, resolution and duration; the lower face follows the new speech.

    Shorter audio or driving motion is padded (silence, a closed mouth); longer is cut at the video's end. Frames without a usable face pass through unchanged. The modes combine."""
    from tasks import model_store, modes, track_artifact
    from tasks.audio import load_audio
    from tasks.lipsync import DubInputs
    from tasks.lipsync import dub as dub_item
    from tasks.track import track_video
    from tasks.train import track_for

    if audio is None and driving_video is None:
        fail("give the new AUDIO, or --driving-video", code=2)
    settings = make_settings(root, None, s3_endpoint_url, detail_transfer=detail, mouth_interior=teeth,
                             rest_mouth=still_pauses, readout_weight=readout)
    storage = Storage(settings)
    try:
        resyncer = model_store.load_model(settings, model)
        features = model_store.features_for(settings, resyncer)
        with frame_progress() as bar:
            task = bar.add_task("tracking", total=None)
            tick = lambda done, total: bar.update(task, completed=done, total=total)  # noqa: E731
            track = track_artifact.load(storage, track_file) if track_file else track_video(storage, settings, video, tick)
            inputs = DubInputs(audio_uri=audio)
            if driving_video:
                bar.update(task, description="tracking the driving video", completed=0)
                driver = track_video(storage, settings, driving_video, tick)
                inputs.displacements = modes.retarget(driver, track)
                if audio is None and load_audio(storage, driving_video, required=False) is not None:
                    inputs.audio_uri = driving_video
            if style_from:
                bar.update(task, description="tracking the style source", completed=0)
                if storage.exists(style_from):
                    style_track = track_video(storage, settings, style_from, tick)
                else:
                    uri, _ = modes.speaker_video(storage, style_from)
                    style_track = track_for(storage, settings, uri)
                inputs.style_displacements = modes.style_from_track(style_track, resyncer.config.syncformer.style_window)
            if reference_from:
                if modes.is_image(reference_from):
                    identity = modes.reference_from_image(storage, settings, reference_from, resyncer.size)
                else:
                    bar.update(task, description="tracking the reference video", completed=0)
                    ref_track = track_video(storage, settings, reference_from, tick)
                    identity = modes.reference_from_video(storage, ref_track, reference_from, resyncer.size,
                                                          settings.crop_size)
                modes.swap_face(inputs, identity)
            bar.update(task, description="dubbing", completed=0)
            result = dub_item(storage, settings, video, inputs, output, resyncer, features, track,
                              model_store.feature_cache(settings), tick)
    except ResyncError as e:
        fail(f"{e} [{e.error_class}]")
    doc = {"output": result.output_uri, "frames": result.frames, "rendered_frames": result.rendered_frames,
           "passed_through": result.passed_through, "fps": round(result.fps, 3),
           "video_seconds": round(result.video_seconds, 3), "audio_seconds": round(result.audio_seconds, 3),
           "audio_overhang_s": round(result.audio_overhang_s, 3), "model_version": result.model_version,
           "detail_factor": result.detail_factor, "teeth_frame": result.teeth_frame, "rest_frame": result.rest_frame,
           **{k: round(v, 3) for k, v in result.timings.items()}}
    skip_teardown()     # published, and every thread, decoder and temporary file of the dub is closed
    if as_json:
        out.print_json(json.dumps(doc))
        return
    t = Table(title=f"dub of {video}")
    t.add_column("what")
    t.add_column("value", overflow="fold")
    for k, v in doc.items():
        t.add_row(k, str(v))
    out.print(t)


def _train_common(root, s3_endpoint_url, audio_features):
    from tasks import model_store

    settings = make_settings(root, None, s3_endpoint_url, **({"audio_features": audio_features} if audio_features else {}))
    storage = Storage(settings)
    features = model_store.audio_features(settings)
    return settings, storage, features, model_store.feature_cache(settings)


def _budgets(plan, sync_seconds: float | None, gen_seconds: float | None, seed: int,
             disc_seconds: float | None = None):
    plan.with_budgets(sync_seconds, gen_seconds, disc_seconds)
    plan.seed = plan.syncformer.seed = plan.generator.seed = seed
    return plan


def _report(summary: dict, folder: str, version: str | None) -> None:
    t = Table(title=f"model {version} in {folder}")
    t.add_column("part")
    t.add_column("steps")
    t.add_column("seconds")
    t.add_column("held-out metric")
    s, g = summary["syncformer"], summary["generator"]
    opening = (f"mouth-opening corr {s['val_opening_corr_start']:.3f} -> {s['val_opening_corr_best']:.3f} "
               f"(concordance {s['val_opening_ccc_start']:.3f} -> {s['val_opening_ccc_best']:.3f}), "
               if "val_opening_ccc_best" in s else "")
    t.add_row("Style-SyncFormer", str(s["steps"]), f"{s['seconds']:.0f}",
              f"{opening}vertex error {s['val_vertex_start']:.4g} -> {s['val_vertex_best']:.4g}")
    t.add_row("generator", str(g["steps"]), f"{g['seconds']:.0f}",
              f"lower-face PSNR {g['val_lower_psnr_start']:.2f} -> {g['val_lower_psnr_best']:.2f} dB")
    if (d := summary.get("discriminator")) is not None:
        t.add_row("discriminator alone", str(d["steps"]), f"{d['seconds']:.0f}",
                  f"real/drawn accuracy {d['val_accuracy_start']:.3f} -> {d['val_accuracy_end']:.3f}")
    if (r := summary.get("readout")) is not None:
        t.add_row(f"motion read-out ({r['components']} directions)", "closed form", "",
                  f"mouth-opening corr {r['val_opening_corr']:.3f} on {r['val_clips']} held-out clips")
    out.print(t)


@model_app.command("train-base")
def train_base(
    videos: Optional[list[str]] = typer.Argument(None, help="Videos of many speakers (local paths or s3:// URIs); "
                                                 "or give --listing."),
    listing: Optional[str] = typer.Option(None, "--listing", help="CSV/Parquet/JSONL of the videos with uri and "
                                          "speaker_id columns (the base's: catalogs/listings/base_train.csv, "
                                          "../shared/data/train/). Validation then holds out whole speakers."),
    val_speakers: Optional[float] = typer.Option(None, "--val-speakers", help="Share of the footage, as whole "
                                                 "speakers, held out for validation with --listing (default 0.15; "
                                                 "0: the last 30% of every clip instead)."),
    output: str = typer.Option(..., "-o", "--output", help="Folder to write the model to (safetensors + config.json)."),
    config: str = typer.Option("cpu", "--config", help="Model configuration: cpu (128 px, 2 cores) or full (256 px, GPU)."),
    sync_seconds: Optional[float] = typer.Option(None, "--syncformer-seconds", help="Time budget of the Style-SyncFormer (default 240; 0 leaves it as it is)."),
    gen_seconds: Optional[float] = typer.Option(None, "--generator-seconds", help="Time budget of the generator (default 1200; 0 leaves it as it is)."),
    disc_seconds: Optional[float] = typer.Option(None, "--discriminator-seconds", min=0.0, help="Time budget of a last "
                                                 "phase that trains the discriminator alone against the finished "
                                                 "generator (default 0: none); the model keeps it, and fine-tunes from "
                                                 "it start their adversarial game with it at their first step."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    sync_loss_weight: float = typer.Option(0.0, "--sync-loss-weight", min=0.0, help="Weight of the bundled sync "
                                           "expert as a Style-SyncFormer loss (0: off, the recipe; on train/'s "
                                           "held-out speakers 0.005 lowered the selected concordance, see README)."),
    voice_share: Optional[float] = typer.Option(None, "--voice-share", min=0.0, max=1.0, help="Share of the "
                                                "Style-SyncFormer's training windows heard in a speed-perturbed voice "
                                                "(pitch and formants 10% lower or higher; default 0: the real voices "
                                                "only; 0.5 was measured, see README: not kept)."),
    readout_components: Optional[int] = typer.Option(None, "--readout-components", min=0, help="Fit a linear read-out "
                                                      "of the audio after training, with this many directions of lip "
                                                      "motion (default 0: none, and a resumed model's is kept; 4 was "
                                                      "measured, see README: not kept); dubs with the model blend it in "
                                                      "(--readout)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue from this model folder's weights."),
    fresh_syncformer: bool = typer.Option(False, "--fresh-syncformer", help="With --resume: keep only its generator and "
                                          "discriminator and train a new Style-SyncFormer in the --config configuration "
                                          "(after a change to the SyncFormer's inputs or shape)."),
    audio_features: Optional[str] = FeaturesOpt,
    root: Optional[str] = RootOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
) -> None:
    """Train a base model pooled over many speakers (self-reconstruction; the end of every clip held out)."""
    from tasks import model_store
    from tasks.train import TrainingPlan, train_base as run

    settings, storage, features, cache = _train_common(root, s3_endpoint_url, audio_features)
    if fresh_syncformer and not resume:
        fail("--fresh-syncformer needs --resume (a model whose generator to keep)", code=2)
    if bool(videos) == bool(listing):
        fail("give the VIDEOS or a --listing, not both", code=2)
    try:
        from catalogs.listing import labelled_videos

        uris, speakers = labelled_videos(storage, listing) if listing else (list(videos), None)
        start = model_store.load_model(settings, resume) if resume else None
        plan = _budgets(TrainingPlan(config=start.config.name if start else config), sync_seconds, gen_seconds, seed,
                        disc_seconds)
        if val_speakers is not None:
            plan.val_speaker_share = val_speakers
        plan.syncformer.sync_weight = sync_loss_weight
        if voice_share is not None:
            plan.syncformer.voice_share = voice_share
        if readout_components is not None:
            plan.readout_components = readout_components
        model, summary = run(storage, settings, uris, output, features, cache, plan, say=console.print, resume=start,
                             fresh_syncformer=fresh_syncformer, speakers=speakers)
    except (ResyncError, ValueError) as e:
        fail(str(e))
    _write_card(model, summary, output)
    _report(summary, output, model.version)


@model_app.command("ensemble")
def ensemble(
    members: list[str] = typer.Argument(..., help="Model folders whose Style-SyncFormers join the base's (each from "
                                        "`train-base --resume BASE --fresh-syncformer --generator-seconds 0 --seed N`)."),
    base: str = typer.Option(..., "--base", help="Model folder whose generator and Style-SyncFormer(s) the result keeps."),
    output: str = typer.Option(..., "-o", "--output", help="Folder to write the assembled base to."),
    listing: Optional[str] = typer.Option(None, "--listing", help="The base's training listing: every member and "
                                          "their average are scored on its held-out speakers (the recipe's split)."),
    weights_dtype: str = typer.Option("float16", "--weights-dtype", help="Precision the weights are stored at "
                                      "(float16 or float32); they always run in float32."),
    audio_features: Optional[str] = FeaturesOpt,
    root: Optional[str] = RootOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
) -> None:
    """Assemble a base whose Style-SyncFormer averages several trained apart (on the base's held-out
    speakers their mean prediction reads the mouth better than any one of them)."""
    import shlex
    import sys

    from catalogs.listing import labelled_videos
    from tasks import model_store
    from tasks.ensemble import ensemble_base, ensemble_card

    if weights_dtype not in ("float16", "float32"):
        fail(f"--weights-dtype must be float16 or float32, not {weights_dtype!r}", code=2)
    settings, storage, features, cache = _train_common(root, s3_endpoint_url, audio_features)
    try:
        uris, speakers = labelled_videos(storage, listing) if listing else (None, None)
        start = model_store.load_model(settings, base)
        parts = [model_store.load_model(settings, m) for m in members]
        model, summary = ensemble_base(storage, settings, start, parts, output, features, cache, uris, speakers,
                                       weights_dtype, say=console.print)
    except (ResyncError, ValueError) as e:
        fail(str(e))
    command = "resync " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    Path(output, "MODEL_CARD.md").write_text(ensemble_card(model, summary, command))
    t = Table(title=f"model {model.version} in {output}: held-out speakers {', '.join(summary.get('held_out_speakers', []))}")
    for col in ("Style-SyncFormer", "opening concordance", "opening corr", "vertex error"):
        t.add_column(col)
    for name, sc in summary.get("scores", {}).items():
        t.add_row(name, f"{sc['opening_ccc']:.3f}", f"{sc['opening_corr']:.3f}", f"{sc['vertex']:.4g}")
    out.print(t)


@model_app.command("finetune")
def finetune(
    videos: list[str] = typer.Argument(..., help="Footage of one speaker (local paths or s3:// URIs)."),
    output: str = typer.Option(..., "-o", "--output", help="Folder to write the speaker model to."),
    speaker_id: str = typer.Option(..., "--speaker-id", help="Catalog speaker id the model is for."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model folder; default the configured/bundled base."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Start from random weights instead of a base."),
    sync_seconds: Optional[float] = typer.Option(None, "--syncformer-seconds", help="Time budget of the Style-SyncFormer (default 60; 0 leaves it as it is)."),
    gen_seconds: Optional[float] = typer.Option(None, "--generator-seconds", help="Time budget of the generator (default 240; 0 leaves it as it is)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    audio_features: Optional[str] = FeaturesOpt,
    root: Optional[str] = RootOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
) -> None:
    """Fine-tune a speaker model from a base on one speaker's footage, within a time budget."""
    from tasks import model_store
    from tasks.train import finetune_plan_for, finetune_speaker

    settings, storage, features, cache = _train_common(root, s3_endpoint_url, audio_features)
    try:
        parent = None if from_scratch else model_store.load_model(settings, base)
        plan = _budgets(finetune_plan_for(parent), sync_seconds, gen_seconds, seed)
        model, summary = finetune_speaker(storage, settings, parent, videos, output, features, speaker_id, cache,
                                          plan, say=console.print)
    except (ResyncError, ValueError) as e:
        fail(str(e))
    _write_card(model, summary, output)
    _report(summary, output, model.version)


@model_app.command("train-sync")
def train_sync(
    listing: str = typer.Option(..., "--listing", help="CSV/Parquet/JSONL of the videos with uri and speaker_id columns "
                                "(the bundled expert's: catalogs/listings/base_train.csv, ../shared/data/train/). "
                                "Never the videos the expert will judge."),
    output: str = typer.Option(..., "-o", "--output", help="Folder to write the expert to (safetensors + config.json + MODEL_CARD.md)."),
    seconds: float = typer.Option(300.0, "--seconds", help="Time budget of the training (it also stops when the "
                                  "held-out speakers stop improving)."),
    val_speakers: float = typer.Option(0.2, "--val-speakers", help="Share of the footage, as whole speakers, held out to select on."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    root: Optional[str] = RootOpt, s3_endpoint_url: Optional[str] = EndpointOpt,
) -> None:
    """Train the audio-visual sync expert that QA and `resync sync` judge with (SyncNet-style; shares nothing with the
    Style-SyncFormer): in-sync mouth/audio windows against the same clip's audio at other times."""
    from catalogs.listing import labelled_videos
    from models.train_sync_expert import SyncExpertTraining
    from tasks.sync_training import train_sync as run

    settings = make_settings(root, None, s3_endpoint_url)
    storage = Storage(settings)
    try:
        uris, speakers = labelled_videos(storage, listing)
        import shlex
        import sys

        _, summary = run(storage, settings, uris, speakers, output, SyncExpertTraining(time_budget_s=seconds, seed=seed),
                         val_share=val_speakers, say=console.print,
                         command="resync " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    except (ResyncError, ValueError) as e:
        fail(str(e))
    b = summary["best"]
    out.print(f"sync expert {summary['version']} in {output}: {summary['steps']} steps, {summary['wall_s']:.0f} s; held-out "
              f"speakers {', '.join(summary['held_out_speakers'])}: offset within a frame on {b['offset_accuracy']:.0%} "
              f"of 2-s segments, confidence {b['confidence']:.3f} (step {b['step']})")


def _write_card(model, summary: dict, output: str) -> None:
    """MODEL_CARD.md and the per-step metrics beside the weights."""
    import shlex
    import sys

    from tasks.train import model_card

    Path(output, "training_log.json").write_text(json.dumps(summary["log"]))
    command = "resync " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    Path(output, "MODEL_CARD.md").write_text(model_card(model, summary, command))


def register(app: typer.Typer) -> None:
    app.command("dub")(dub)
    app.add_typer(model_app, name="model")


logging.getLogger("tasks").setLevel(logging.INFO)
