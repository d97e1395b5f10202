"""Quality benchmark on unseen speakers (DESIGN section 6): the base never trained on, or was
selected on, the nine people of ../shared/data/videos; each clip's first 70% is the *fit* part and
its last 30% the *eval* part, dubbed with its own audio so that the real frames are ground truth.

    make bench-quality                                  # every clip in ../shared/data/videos
    python -m bench.quality --clips speaker_map_5s.mp4 --sections quality

Both parts are cut into videos of their own (``tasks.segment``) and go through the code a user runs:
``resync dub``'s ``tasks.lipsync.dub`` for every method and ``resync model finetune``'s
``tasks.train.finetune_speaker`` for the personalized row. The style reference and the reference
crop come from the fit part only. Methods, all composited like a dub (detail transfer included):

- ``zero_shot``: the base;
- ``personalized``: the base fine-tuned on the fit part, default recipe and budget (``--sync-seconds``,
  ``--gen-seconds``);
- ``oracle_mesh``: the base driven by the eval part's tracked motion: the renderer's ceiling;
- ``retrieval``: per frame, the tracked motion of the fit frame whose lips are nearest to the
  zero-shot prediction;
- ``static``: the speaker's average face (no motion) on every frame.

Metrics on the eval frames, output and ground truth both re-tracked in the 256-px aligned crop:
mouth-opening correlation and amplitude ratio (std of the output's opening over the real one's),
LMD (lip landmark distance, px), lower-face PSNR and SSIM, mouth interior on frames whose real mouth
is open (brightness, contrast and sharpness inside the real inner-lip contour, output over real:
``tasks.mouth_quality``), mouth sharpness (Laplacian variance around the lips, output over real),
identity distance (dlib descriptor), and the sync expert's offset, confidence and distance
(``tasks.sync``: the output's re-tracked mouth against its own audio).

Sync expert calibration (``sync``): every whole clip with its own audio, that audio 10 frames late
and early, another clip's audio, the mouth frozen, and our zero-shot dub of the clip with its own
audio judged as QA judges it; the expert trained on train/ only.

Cross-language: the start of every clip dubbed zero-shot with two foreign tracks (``audio/``) and
re-tracked: the mouth's mean opening in the pauses over the speaker's own closed mouth, and its
motion in the pauses over its motion in speech.

Speaker-disjoint cross-validation (``cv``): the base recipe's Style-SyncFormer trained on the speakers
of four of five folds over train/ and videos/, scored on the fifth like the quality table (style code
from the first 70% of each held-out clip, scored on the rest), next to ridge regression on the same
audio tokens (scored there and over the whole clip) and ridge given the held-out clip's own first
70% as well: what a linear read-out of these features reaches, with and without the speaker.
Then one row per other mode with the base model (``modes``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from skimage.metrics import structural_similarity

from catalogs.listing import labelled_videos
from catalogs.settings import Settings
from catalogs.storage import Storage
from models.renderer import mouth_mask
from models.resyncer import ReSyncer
from models.syncformer import StyleSyncFormer
from models.sync_expert import SyncExpert
from models.train_syncformer import train_syncformer
from tasks import model_store
from tasks.audio import load_audio
from tasks.decode import VideoSource
from tasks.detail import detail_factor
from tasks.facemesh import FaceMeshTracker
from tasks.geometry import warp_crop
from tasks.identity import FaceIdentity
from tasks.landmarks import LIPS, mouth_opening
from tasks.dub_plan import (crop_vertices, fit_audio_length, planned_meshes, predict_displacements, reference_frame,
                            reference_window, renderable, video_duration)
from tasks.lipsync import DubInputs, dub
from tasks.mouth_interior import MouthReference, speaker_mouth
from tasks.mouth_quality import amplitude_ratio, interior_ratios, rest_in_silence
from tasks.qa import QA_CROP, OutputObserver, corr, laplacian_sharpness, speech_frames
from tasks.sync import SyncScore, calibration, judge_sync, load_sync_expert
from tasks.segment import cut_segment
from tasks.train import (MOUTH, PreparedClip, TrainingPlan, finetune_plan, finetune_plan_for, finetune_speaker,
                         hold_out_speakers, prepare_clip, sequences, track_for)
from tasks.training_data import crop_matrices

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRAIN_LISTING = Path(__file__).resolve().parents[1] / "catalogs" / "listings" / "base_train.csv"
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("zero_shot", "personalized", "oracle_mesh", "retrieval", "static")
FOREIGN = ("french1.wav", "german1.wav", "italian1.wav", "japan1.wav", "korean2.wav", "spanish3.wav", "french2.wav",
           "german2.wav", "japan2.wav")
console = Console(width=200)


@dataclass
class Scores:
    lmd: float
    psnr: float
    ssim: float
    opening_corr: float
    amplitude: float
    interior_brightness: float
    interior_contrast: float
    interior_sharpness: float
    open_frames: float
    av_offset: float
    av_conf: float
    av_dist: float
    identity: float
    sharpness: float


def retrack(crops: list[np.ndarray]) -> np.ndarray:
    """(N, 478, 3) landmarks of a sequence of crops (NaN where no face is found)."""
    tracker = FaceMeshTracker(max_faces=1)
    out = np.full((len(crops), 478, 3), np.nan, np.float32)
    try:
        for i, c in enumerate(crops):
            faces = tracker.process(i, c)
            if faces:
                out[i] = faces[0].points
    finally:
        tracker.close()
    return out


def aligned_crops(storage: Storage, uri: str, mats: np.ndarray, frames: np.ndarray, size: int) -> list[np.ndarray]:
    """The aligned crops (``mats``, one per frame of the video) of the given frames of ``uri``."""
    wanted, out = set(int(i) for i in frames), []
    with VideoSource(storage, uri) as video:
        for chunk in video.chunks(32, start=int(frames.min()), stop=int(frames.max()) + 1):
            out.extend(warp_crop(f, mats[i], size) for f, i in zip(chunk.frames, chunk.indices) if int(i) in wanted)
    return out


def score(outputs: list[np.ndarray], truths: list[np.ndarray], masks256: np.ndarray, gt_marks: np.ndarray,
          judge: Callable[[np.ndarray], SyncScore], identity: FaceIdentity) -> Scores:
    """``judge``: the sync expert on the re-tracked output landmarks of the scored frames."""
    marks = retrack(outputs)
    lmd = np.nanmean(np.linalg.norm(marks[:, LIPS, :2] - gt_marks[:, LIPS, :2], axis=-1))
    psnrs, ssims, ids, sharp = [], [], [], []
    for o, t, m, gm in zip(outputs, truths, masks256, gt_marks):
        w = m > 0.5
        mse = np.mean((o[w].astype(np.float64) - t[w]) ** 2)
        psnrs.append(10 * np.log10(255 ** 2 / max(mse, 1e-9)))
        _, smap = structural_similarity(o, t, channel_axis=2, full=True, data_range=255)
        ssims.append(float(smap.mean(-1)[w].mean()))
        if np.isfinite(gm).all():
            box = (*gm[:, :2].min(0), *gm[:, :2].max(0))
            ids.append(identity.distance(identity.descriptor(o, box), identity.descriptor(t, box)))
            mouth = OutputObserver.mouth_box(gm[:, :2])
            sharp.append(laplacian_sharpness(o[mouth]) / max(laplacian_sharpness(t[mouth]), 1e-6))
    opening, real = mouth_opening(marks), mouth_opening(gt_marks)
    sync = judge(marks)
    inside = interior_ratios(outputs, truths, gt_marks)
    return Scores(float(lmd), float(np.mean(psnrs)), float(np.mean(ssims)), corr(opening, real),
                  amplitude_ratio(opening, real), inside["interior_brightness"], inside["interior_contrast"],
                  inside["interior_sharpness"], inside["open_frames"], sync.offset_frames, sync.confidence, sync.distance,
                  float(np.mean(ids)) if ids else float("nan"), float(np.median(sharp)) if sharp else float("nan"))


@dataclass
class ClipParts:
    """A clip cut into its fit and eval videos, each tracked, and what the fit part lends the dubs."""
    name: str
    fit_uri: str
    eval_uri: str
    fit: object                 # TrackResult of the fit part
    eval: object                # TrackResult of the eval part
    style: np.ndarray           # reference motion from the fit part
    reference: np.ndarray       # reference crop (model size) from the fit part
    mouth: MouthReference | None  # the open mouth whose teeth a dub shows (settings.mouth_interior), from the fit part


def clip_uri(name: str) -> str:
    """A clip of ``videos/`` by its name, or any clip of the shared data by its path under it."""
    return str(SHARED / name) if "/" in name else str(SHARED / "videos" / name)


def cut_clip(storage: Storage, settings: Settings, uri: str, fit_fraction: float, size: int, window: int,
             scratch: Path) -> ClipParts:
    whole = track_for(storage, settings, uri)
    cut = int(round(whole.n_frames * fit_fraction))
    stem = Path(uri).stem
    fit_uri = cut_segment(storage, uri, 0, cut, str(scratch / f"{stem}-fit.mp4"))
    eval_uri = cut_segment(storage, uri, cut, whole.n_frames, str(scratch / f"{stem}-eval.mp4"))
    fit, ev = track_for(storage, settings, fit_uri), track_for(storage, settings, eval_uri)
    usable = renderable(fit)
    style = reference_window(fit.displacements, usable, window)
    r = reference_frame(fit, usable)
    mats = crop_matrices(fit, size, settings.crop_size)
    factor = detail_factor(mats[usable], settings.detail_max_factor)
    with VideoSource(storage, fit_uri) as video:
        reference = warp_crop(video.frame(r), mats[r], size)
        mouth = speaker_mouth(video.frame, fit, usable, mats * factor, size * factor,
                              settings.mouth_interior_min_opening) if settings.mouth_interior else None
    return ClipParts(stem, fit_uri, eval_uri, fit, ev, style, reference, mouth)


def retrieval_motion(parts: ClipParts, predicted: np.ndarray) -> np.ndarray:
    """Per eval frame, the tracked motion of the fit frame whose lips are nearest to ``predicted``."""
    fit_frames = np.flatnonzero(renderable(parts.fit))
    fit_lips = np.nan_to_num(parts.fit.displacements[fit_frames][:, LIPS].reshape(len(fit_frames), -1))
    pred_lips = np.nan_to_num(predicted[:, LIPS].reshape(len(predicted), -1))
    nearest = np.empty(len(predicted), np.int64)
    for lo in range(0, len(predicted), 256):   # bounded: (256 x fit frames) distances at a time
        d = ((pred_lips[lo:lo + 256, None] - fit_lips[None]) ** 2).sum(-1)
        nearest[lo:lo + 256] = fit_frames[np.argmin(d, axis=1)]
    return np.nan_to_num(parts.fit.displacements[nearest]).astype(np.float32)


def bench_clip(storage: Storage, settings: Settings, base: ReSyncer, uri: str, features, cache, budgets: tuple[float, float],
               fit_fraction: float, identity: FaceIdentity, scratch: Path, expert: SyncExpert,
               methods: tuple[str, ...] = METHODS) -> tuple[dict[str, Scores], dict]:
    size, window = base.size, base.config.syncformer.style_window
    parts = cut_clip(storage, settings, uri, fit_fraction, size, window, scratch)
    ev = parts.eval

    # 1. The speaker model: `resync model finetune` on the fit part, the default recipe within the budget.
    t0 = time.perf_counter()
    speaker, summary = base, {"syncformer": {"steps": 0}, "generator": {"steps": 0}}
    if "personalized" in methods:
        plan = finetune_plan_for(base).with_budgets(*budgets)
        speaker, summary = finetune_speaker(storage, settings, base, [parts.fit_uri], scratch / f"{parts.name}-speaker",
                                            features, parts.name, cache, plan, say=lambda s: None)
    train_s = time.perf_counter() - t0

    # 2. Every method is a `resync dub` of the eval part (its own audio; style and reference from the fit part).
    samples = fit_audio_length(load_audio(storage, parts.eval_uri).samples, video_duration(ev))
    predicted = predict_displacements(base, features, cache, samples, ev, parts.style, settings.readout_weight)
    drives = {"zero_shot": (base, None), "personalized": (speaker, None), "oracle_mesh": (base, ev.displacements),
              "retrieval": (base, retrieval_motion(parts, predicted)),
              "static": (base, np.zeros_like(ev.displacements))}
    outputs = {}
    for name, (model, motion) in ((m, drives[m]) for m in methods):
        out = str(scratch / f"{parts.name}-{name}.mp4")
        dub(storage, settings, parts.eval_uri, DubInputs(parts.eval_uri, displacements=motion,
                                                         style_displacements=parts.style, reference_crop=parts.reference,
                                                         mouth_reference=parts.mouth),
            out, model, features, ev, cache)
        outputs[name] = out

    # 3. Score the re-tracked outputs against the eval part's real frames.
    usable = renderable(ev)
    frames = np.flatnonzero(usable)
    truths = aligned_crops(storage, parts.eval_uri, ev.crop, frames, settings.crop_size)
    gt_marks = retrack(truths)
    old_c = planned_meshes(ev, np.zeros_like(ev.displacements))[1]
    masks256 = mouth_mask(torch.from_numpy(crop_vertices(ev, old_c, usable, ev.crop)[frames]),
                          settings.crop_size)[:, 0].numpy()
    def judge(marks: np.ndarray) -> SyncScore:
        full = np.full((ev.n_frames, *marks.shape[1:]), np.nan, np.float32)
        full[frames] = marks
        return judge_sync(expert, full, ev.timestamps, samples)

    scores = {m: score(aligned_crops(storage, outputs[m], ev.crop, frames, settings.crop_size), truths, masks256,
                       gt_marks, judge, identity) for m in methods}
    pred_open = mouth_opening(planned_meshes(ev, predicted)[0][frames])
    info = {"fit_frames": int(parts.fit.n_frames), "eval_frames": int(len(frames)), "train_s": round(train_s, 1),
            "sync_steps": summary["syncformer"]["steps"], "gen_steps": summary["generator"]["steps"],
            "mesh_opening_corr": corr(pred_open, mouth_opening(old_c[frames])),
            "mesh_amplitude": amplitude_ratio(pred_open, mouth_opening(old_c[frames]))}
    return scores, info


def foreign_rows(storage: Storage, settings: Settings, base: ReSyncer, uri: str, features, cache, tracks: tuple[str, str],
                 fit_fraction: float, scratch: Path, tail_s: float = 4.0) -> list[dict]:
    """The start of the clip (the foreign track's length plus ``tail_s`` of silence) dubbed zero-shot
    with each foreign track; the mouth at rest in the pauses, from the re-tracked output."""
    size, window = base.size, base.config.syncformer.style_window
    parts = cut_clip(storage, settings, uri, fit_fraction, size, window, scratch)
    whole = track_for(storage, settings, uri)
    closed = float(np.nanpercentile(mouth_opening(whole.smoothed[renderable(whole)]), 10))
    rows = []
    for wav in tracks:
        audio_uri = str(SHARED / "audio" / wav)
        audio = load_audio(storage, audio_uri)
        stop = int(np.searchsorted(whole.timestamps, audio.duration_s + tail_s))
        start_uri = cut_segment(storage, uri, 0, max(stop, 2), str(scratch / f"{parts.name}-start-{Path(wav).stem}.mp4"))
        start = track_for(storage, settings, start_uri)
        out = str(scratch / f"{parts.name}-{Path(wav).stem}.mp4")
        dub(storage, settings, start_uri, DubInputs(audio_uri, style_displacements=parts.style,
                                                    reference_crop=parts.reference), out, base, features, start, cache)
        frames = np.flatnonzero(renderable(start))
        opening = np.full(start.n_frames, np.nan)
        opening[frames] = mouth_opening(retrack(aligned_crops(storage, out, start.crop, frames, settings.crop_size)))
        speech = speech_frames(audio, start.timestamps)
        rows.append({"clip": parts.name, "track": wav, **rest_in_silence(opening, speech, closed)})
    return rows


def ridge(x: np.ndarray, y: np.ndarray, lam: float = 1.0, weights: np.ndarray | None = None) -> "RidgeModel":
    """Ridge regression on standardised inputs, penalty ``lam`` per training row (so it does not fade
    as footage grows); ``weights`` count some rows more (a speaker's own footage among everyone's)."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    w = np.ones(len(x)) if weights is None else weights
    a = xs.T @ (xs * w[:, None])
    a[:-1, :-1] += lam * w.sum() * np.eye(xs.shape[1] - 1)
    return RidgeModel(mu, sd, np.linalg.solve(a, xs.T @ (w * y)))


@dataclass
class RidgeModel:
    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray            # (D + 1,): the last is the intercept

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std @ self.coef[:-1] + self.coef[-1]


def speaker_folds(speakers: list[str], k: int) -> list[set[str]]:
    """``k`` disjoint sets of speakers, dealt in a fixed shuffled order (seed 0)."""
    order = np.random.default_rng(0).permutation(sorted(set(speakers))).tolist()
    return [set(order[i::k]) for i in range(k)]


def _standard(v: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread: ridge learns the timing of the opening, not each speaker's amplitude."""
    return (v - v.mean()) / (v.std() + 1e-9)


def cross_validate(clips: list[PreparedClip], speakers: list[str], tracks: list, base: ReSyncer, seconds: float,
                   folds: int = 5, fit_fraction: float = 0.7, own_weight: float = 20.0) -> list[dict]:
    """Speaker-disjoint cross-validation of the Style-SyncFormer against ridge regression, scored like
    the quality table: each held-out clip's style code from its first ``fit_fraction``, its mouth
    opening scored on the rest. Per fold the Style-SyncFormer is the base recipe's (``TrainingPlan``:
    its losses, and whole speakers of the training folds held out to select its weights) within
    ``seconds``; ridge reads the same audio tokens. ``ridge_own`` adds the held-out clip's own first
    part to ridge's training rows (``own_weight`` times each): how far a speaker's own footage can lift
    a read-out of these features, the headroom a per-speaker model has."""
    rows = []
    plan = TrainingPlan(config=base.config.name)

    def opening_of(j: int, c: PreparedClip, disp: np.ndarray) -> np.ndarray:
        return mouth_opening(tracks[j].templates[tracks[j].shot_index][c.clip.frames] + disp)

    for c, s in zip(clips, speakers):
        c.speaker = s
    for f, held in enumerate(speaker_folds(speakers, folds)):
        train = [j for j, s in enumerate(speakers) if s not in held]
        inner = [clips[j] for j in train]
        hold_out_speakers(inner, plan.val_speaker_share, plan.split_seed)
        torch.manual_seed(f)
        model = StyleSyncFormer(replace(base.config.syncformer, members=1))
        try:
            train_syncformer(model, sequences(inner), torch.from_numpy(LIPS),
                             replace(plan.syncformer, time_budget_s=seconds, seed=f, log=[]), mouth=MOUTH)
        finally:
            for c in inner:
                c.held_out = False
        x = np.concatenate([clips[j].audio for j in train])
        y = np.concatenate([_standard(opening_of(j, clips[j], clips[j].clip.disp)) for j in train])
        others = ridge(x, y)
        for j, s in enumerate(speakers):
            c = clips[j]
            cut = int(round(len(c.clip) * fit_fraction))
            if s not in held or cut < 16 or len(c.clip) - cut < 16:
                continue
            gt = opening_of(j, c, c.clip.disp)
            with torch.no_grad():
                ref = reference_window(c.clip.disp[:cut], np.ones(cut, bool), model.cfg.style_window)
                pred = model(torch.from_numpy(c.audio)[None], model.style(torch.from_numpy(ref)[None]))[0].numpy()
            syn = opening_of(j, c, pred)[cut:]
            own = ridge(np.concatenate([x, c.audio[:cut]]), np.concatenate([y, _standard(gt[:cut])]),
                        weights=np.concatenate([np.ones(len(x)), np.full(cut, own_weight)]))
            rows.append({"fold": f, "clip": Path(c.uri).name, "speaker": s, "frames": len(gt) - cut,
                         "syncformer_corr": corr(syn, gt[cut:]), "syncformer_amplitude": amplitude_ratio(syn, gt[cut:]),
                         "ridge_corr": corr(others(c.audio[cut:]), gt[cut:]),
                         "ridge_whole_corr": corr(others(c.audio), gt),
                         "ridge_own_corr": corr(own(c.audio[cut:]), gt[cut:])})
        done = [r for r in rows if r["fold"] == f]
        console.print(f"  fold {f + 1}/{folds} ({len(held)} speakers, {len(done)} clips), last "
                      f"{1 - fit_fraction:.0%}: Style-SyncFormer {np.nanmean([r['syncformer_corr'] for r in done]):.3f}, "
                      f"ridge {np.nanmean([r['ridge_corr'] for r in done]):.3f}, "
                      f"ridge + own {np.nanmean([r['ridge_own_corr'] for r in done]):.3f}")
    return rows


def _mean(rows: list[dict], key: str) -> float:
    return float(np.nanmean([r[key] for r in rows])) if rows else float("nan")


def report_quality(per_clip: dict[str, dict], names: list[str], base: ReSyncer, args: argparse.Namespace) -> None:
    """The mean table over clips and the per-clip tables."""
    t = Table(title=f"unseen speakers: the last {1 - args.fit_fraction:.0%} of each clip dubbed with its own audio "
                    f"(base {base.version}; personalized: finetune on the first {args.fit_fraction:.0%}, "
                    f"{args.sync_seconds:.0f}+{args.gen_seconds:.0f} s CPU); mean over {len(names)} clips")
    cols = [("LMD px ↓", "lmd", ".2f"), ("PSNR ↑", "psnr", ".2f"), ("SSIM ↑", "ssim", ".3f"),
            ("opening corr ↑", "opening_corr", ".3f"), ("amplitude →1", "amplitude", ".3f"),
            ("interior bright →1", "interior_brightness", ".3f"), ("interior contrast →1", "interior_contrast", ".3f"),
            ("interior sharp →1", "interior_sharpness", ".3f"), ("sharpness →1", "sharpness", ".3f"),
            ("identity ↓", "identity", ".3f"), ("|AV off| ↓", "av_offset", ".2f"), ("AV conf ↑", "av_conf", ".3f"),
            ("AV dist ↓", "av_dist", ".3f")]
    t.add_column("method")
    for head, _, _ in cols:
        t.add_column(head, justify="right")
    t.add_column("LMD / static", justify="right")
    static_lmd = np.nanmean([per_clip[c]["static"]["lmd"] for c in names])
    for m in args.methods:
        vals = {k: np.nanmean([abs(per_clip[c][m][k]) if k == "av_offset" else per_clip[c][m][k] for c in names])
                for k in (f.name for f in fields(Scores))}
        t.add_row(m, *[format(vals[k], fmt) for _, k, fmt in cols], f"{vals['lmd'] / static_lmd:.2f}")
    console.print(t)
    for m in (m for m in ("zero_shot", "personalized") if m in args.methods):
        per = Table(title=f"per clip: {m} (static)")
        for col in ("clip", "fit/eval frames", "open frames", "train s", "opening corr", "amplitude", "mesh corr/amp",
                    "LMD", "interior bright", "sharpness", "identity"):
            per.add_column(col, justify="right")
        for c in names:
            r, s, i = per_clip[c][m], per_clip[c]["static"], per_clip[c]["info"]
            per.add_row(c, f"{i['fit_frames']}/{i['eval_frames']}", f"{r['open_frames']:.0f}", f"{i['train_s']:.0f}",
                        f"{r['opening_corr']:.3f}", f"{r['amplitude']:.3f}",
                        f"{i['mesh_opening_corr']:.3f}/{i['mesh_amplitude']:.3f}" if m == "zero_shot" else "",
                        f"{r['lmd']:.2f} ({s['lmd']:.2f})", f"{r['interior_brightness']:.3f}", f"{r['sharpness']:.3f}",
                        f"{r['identity']:.3f}")
        console.print(per)


def dub_sync(storage: Storage, settings: Settings, base: ReSyncer, features, cache, uri: str, track, expert: SyncExpert,
             scratch: Path) -> SyncScore:
    """A zero-shot dub of the whole clip with its own audio, judged as QA judges every dub: the
    expert on the output's re-tracked mouth (``OutputObserver``) and the output's audio."""
    observer = OutputObserver(crop_matrices(track, QA_CROP, settings.crop_size), renderable(track))
    try:
        dub(storage, settings, uri, DubInputs(uri), str(scratch / f"{Path(uri).stem}-sync-dub.mp4"), base, features, track,
            cache, observer=observer, observer_crop=QA_CROP)
    finally:
        observer.close()
    samples = fit_audio_length(load_audio(storage, uri).samples, video_duration(track))
    return judge_sync(expert, observer.marks, track.timestamps, samples)


def report_sync(rows: list[dict], per_clip: dict[str, dict], settings: Settings) -> None:
    """The calibration table (QA's review thresholds in the title), and our dubs' eval parts when measured."""
    t = Table(title=f"sync expert on unseen speakers (QA reviews |offset| > {settings.qa_max_av_offset_frames:g}, "
                    f"confidence < {settings.qa_min_av_confidence:g})")
    for col in ("clip", "case", "offset", "confidence", "distance"):
        t.add_column(col, justify="right")
    cases = (("own", "own audio"), ("late", "audio 10 frames late"), ("early", "audio 10 frames early"),
             ("other", "another clip's audio"), ("frozen", "frozen mouth"), ("dub", "our zero-shot dub, own audio"))
    for r in rows:
        for key, label in cases:
            t.add_row(r["clip"], label, f"{r[f'{key}_offset_frames']:+.0f}", f"{r[f'{key}_confidence']:.3f}",
                      f"{r[f'{key}_distance']:.3f}")
    for key, label in cases:
        t.add_row("mean", label, f"{np.nanmean([abs(r[f'{key}_offset_frames']) for r in rows]):.2f} (|.|)",
                  f"{np.nanmean([r[f'{key}_confidence'] for r in rows]):.3f}",
                  f"{np.nanmean([r[f'{key}_distance'] for r in rows]):.3f}")
    for m in ("zero_shot", "personalized", "oracle_mesh", "static"):
        got = [per_clip[c][m] for c in per_clip if m in per_clip[c]]
        if got:
            t.add_row("mean", f"dub {m} (eval parts)", f"{np.nanmean([abs(g['av_offset']) for g in got]):.2f} (|.|)",
                      f"{np.nanmean([g['av_conf'] for g in got]):.3f}", f"{np.nanmean([g['av_dist'] for g in got]):.3f}")
    console.print(t)


def mode_rows(storage: Storage, settings: Settings, model: ReSyncer, features, cache, scratch: Path) -> list[dict]:
    """Video-driven and style-transfer rows (DESIGN section 2: the same weights, rewired inputs)."""
    from tasks import modes
    from tasks.lipsync import DubInputs, dub
    from tasks.track import track_video

    videos = SHARED / "videos"
    tracks = {n: track_for(storage, settings, str(videos / n)) for n in
              ("speaker_map_5s.mp4", "speaker_glasses_5s.mp4", "address_woman_mpeg4_8s.mp4", "address_man_long_60s.mp4")}
    target, driver = tracks["speaker_map_5s.mp4"], tracks["speaker_glasses_5s.mp4"]
    out = str(scratch / "driven.mp4")
    dub(storage, settings, str(videos / "speaker_map_5s.mp4"),
        DubInputs(str(videos / "speaker_glasses_5s.mp4"), displacements=modes.retarget(driver, target)), out, model,
        features, target)
    got = mouth_opening(track_video(storage, settings, out).smoothed)
    drv = np.interp(target.timestamps, driver.timestamps, mouth_opening(driver.smoothed))
    rows = [{"mode": "video-driven (map <- glasses): opening corr", "with driver": corr(got, drv),
             "with original": corr(got, mouth_opening(target.smoothed))}]
    lively, calm = "address_woman_mpeg4_8s.mp4", "address_man_long_60s.mp4"
    amp, own = {}, {}
    for n in (lively, calm):
        style = modes.style_from_track(tracks[n], model.config.syncformer.style_window)
        r = dub(storage, settings, str(videos / "speaker_map_5s.mp4"),
                DubInputs(str(SHARED / "audio" / "english_vlog_10s.wav"), style_displacements=style),
                str(scratch / f"style-{n}"), model, features, target, cache)
        amp[n], own[n] = float(np.std(r.predicted_opening)), float(np.nanstd(mouth_opening(tracks[n].canonical())))
    rows.append({"mode": "style transfer (woman_mpeg4 / man_long)", "amplitude ratio": amp[lively] / amp[calm],
                 "sources' own ratio": own[lively] / own[calm]})
    rows.append(swap_row(storage, settings, model, features, tracks, scratch))
    return rows


def swap_row(storage: Storage, settings: Settings, model: ReSyncer, features, tracks: dict, scratch: Path) -> dict:
    """Face swap: speaker_map_5s shown as speaker_glasses_5s (dlib distances, pose error)."""
    from tasks import modes
    from tasks.identity import swap_distances
    from tasks.lipsync import DubInputs, dub
    from tasks.track import track_video

    videos = SHARED / "videos"
    src_uri, ref_uri = str(videos / "speaker_map_5s.mp4"), str(videos / "speaker_glasses_5s.mp4")
    source, ref = tracks["speaker_map_5s.mp4"], tracks["speaker_glasses_5s.mp4"]
    out = str(scratch / "swap.mp4")
    identity = modes.reference_from_video(storage, ref, ref_uri, model.size, settings.crop_size)
    dub(storage, settings, src_uri, modes.swap_face(DubInputs(src_uri), identity), out, model, features, source)
    swapped = track_video(storage, settings, out)
    to_ref, to_src = swap_distances(storage, FaceIdentity(), (out, swapped), (src_uri, source), (ref_uri, ref))
    ok = swapped.valid & source.valid
    return {"mode": "face swap (map shown as glasses): dlib distances", "to reference": float(to_ref.mean()),
            "to source": float(to_src.mean()), "frames nearer the reference": float(np.mean(to_ref < to_src)),
            "pose error deg": float(np.abs(swapped.euler[ok] - source.euler[ok]).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", nargs="*", default=None,
                    help="clip names in ../shared/data/videos (default: all), or paths under ../shared/data "
                         "(train/NAME.mp4: the base's held-out validation speakers, to choose a setting on)")
    ap.add_argument("--methods", type=lambda v: tuple(v.split(",")), default=METHODS,
                    help=f"comma-separated rows of the quality table (default: {','.join(METHODS)}; static is "
                         "always scored, as the LMD reference)")
    ap.add_argument("--model", default=None, help="base model folder (default: the bundled base)")
    defaults = finetune_plan()
    ap.add_argument("--sync-seconds", type=float, default=defaults.syncformer.time_budget_s,
                    help="per-speaker Style-SyncFormer budget (default: the finetune recipe's)")
    ap.add_argument("--gen-seconds", type=float, default=defaults.generator.time_budget_s,
                    help="per-speaker generator budget (default: the finetune recipe's)")
    ap.add_argument("--cv-seconds", type=float, default=TrainingPlan().syncformer.time_budget_s,
                    help="Style-SyncFormer budget per cross-validation fold (default: the base recipe's)")
    ap.add_argument("--folds", type=int, default=5, help="speaker-disjoint folds over train/ and videos/")
    ap.add_argument("--fit-fraction", type=float, default=0.7)
    ap.add_argument("--sections", default="quality,sync,foreign,cv,modes",
                    help="comma-separated tables to run: quality, sync, foreign, cv, modes")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / ".work" / "bench-root"),
                    help="storage root for cached tracks and features")
    args = ap.parse_args()
    args.methods = tuple(m for m in METHODS if m in set(args.methods) | {"static"})
    torch.set_num_threads(2)
    settings = Settings(root=args.root, allowed_roots=[str(SHARED), args.root])
    storage = Storage(settings)
    base = model_store.load_model(settings, args.model)
    features, cache = model_store.features_for(settings, base), model_store.feature_cache(settings)
    names = args.clips or sorted(p.name for p in (SHARED / "videos").glob("*.mp4"))
    sections = set(args.sections.split(","))
    scratch = Path(args.root) / "bench-quality"
    scratch.mkdir(parents=True, exist_ok=True)
    identity = FaceIdentity()
    started = time.perf_counter()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"quality-{time.strftime('%Y%m%d-%H%M%S')}.json"
    per_clip: dict[str, dict] = {}
    foreign: list[dict] = []
    cv: list[dict] = []
    mode_results: list[dict] = []
    sync_rows: list[dict] = []
    expert = load_sync_expert(settings.sync_expert_dir)[0]

    dub_settings = {k: getattr(settings, k) for k in ("motion_gain", "detail_transfer", "detail_from", "mouth_interior",
                                                      "rest_min_pause_s", "rest_mouth", "readout_weight")}

    def save() -> None:
        """Written after every clip and section: a long run that is stopped keeps what it measured."""
        out.write_text(json.dumps({"base": base.version, "args": vars(args), "dub_settings": dub_settings, "clips": per_clip, "foreign": foreign,
                                   "cv": cv, "modes": mode_results, "sync": sync_rows, "wall_s": time.perf_counter() - started},
                                  indent=2, default=float))

    for name in names if "quality" in sections else []:
        console.print(f"[bold]{name}[/bold]: finetune on the first {args.fit_fraction:.0%}, dub the rest ...")
        scores, info = bench_clip(storage, settings, base, clip_uri(name), features, cache,
                                  (args.sync_seconds, args.gen_seconds), args.fit_fraction, identity, scratch, expert,
                                  args.methods)
        per_clip[name] = {"info": info, **{m: s.__dict__ for m, s in scores.items()}}
        save()
        console.print("  " + ", ".join(f"{m} corr {s.opening_corr:.2f} amp {s.amplitude:.2f} inside {s.interior_brightness:.2f}"
                                       for m, s in scores.items()))
    if per_clip:
        report_quality(per_clip, names, base, args)

    if "sync" in sections:
        console.print("[bold]sync expert calibration[/bold] on the whole clips ...")
        for k, name in enumerate(names):
            track = track_for(storage, settings, clip_uri(name))
            other = names[(k + 1) % len(names)]
            seconds = video_duration(track)
            own = fit_audio_length(load_audio(storage, clip_uri(name)).samples, seconds)
            alien = fit_audio_length(load_audio(storage, str(SHARED / "videos" / other)).samples, seconds)
            r = calibration(expert, track.raw, track.timestamps, track.fps, own, alien)
            r["dub"] = dub_sync(storage, settings, base, features, cache, clip_uri(name), track, expert,
                                scratch)
            sync_rows.append({"clip": name, "other": other, **{f"{case}_{key}": v for case, sc in r.items()
                                                               for key, v in sc.as_dict().items()}})
            save()
        report_sync(sync_rows, per_clip, settings)

    if "foreign" in sections:
        console.print("[bold]cross-language[/bold]: zero-shot dubs with foreign tracks, the mouth in the pauses ...")
        for k, name in enumerate(names):
            pair = (FOREIGN[k % len(FOREIGN)], FOREIGN[(k + 4) % len(FOREIGN)])
            foreign += foreign_rows(storage, settings, base, clip_uri(name), features, cache, pair,
                                    args.fit_fraction, scratch)
            save()
        ft = Table(title="translated tracks, zero-shot: the mouth in the pauses (targets <= 1.2x closed; <= 0.3x motion)")
        for col in ("clip", "track", "opening / own closed mouth", "motion / motion in speech"):
            ft.add_column(col, justify="right")
        for r in foreign:
            ft.add_row(r["clip"], r["track"], f"{r['silence_opening_ratio']:.2f}", f"{r['silence_motion_ratio']:.2f}")
        ft.add_row("mean", "", f"{_mean(foreign, 'silence_opening_ratio'):.2f}", f"{_mean(foreign, 'silence_motion_ratio'):.2f}")
        console.print(ft)

    if args.cv_seconds > 0 and "cv" in sections:
        console.print(f"[bold]speaker-disjoint cross-validation[/bold] ({args.folds} folds over train/ and videos/) ...")
        uris, speakers = labelled_videos(storage, str(TRAIN_LISTING))
        uris += [clip_uri(n) for n in names]
        speakers += [f"videos/{n}" for n in names]
        tracks = [track_for(storage, settings, u) for u in uris]
        clips = [prepare_clip(storage, settings, u, base.size, features, cache, tr, base.config.syncformer.audio_offsets)
                 for u, tr in zip(uris, tracks)]
        cv[:] = cross_validate(clips, speakers, tracks, base, args.cv_seconds, args.folds, args.fit_fraction)
        save()
        lt = Table(title=f"speaker-disjoint {args.folds}-fold cross-validation, mouth-opening correlation "
                         f"({args.cv_seconds:.0f} s per fold; style from the first {args.fit_fraction:.0%} of a clip, "
                         f"scored on the rest unless it says whole)")
        for col in ("clips", "Style-SyncFormer", "its amplitude", "ridge", "ridge, whole clip",
                    "ridge + the clip's own first part"):
            lt.add_column(col, justify="right")
        unseen = [r for r in cv if r["speaker"].startswith("videos/")]
        for label, rows in (("videos/ (unseen set)", unseen), ("all clips", cv)):
            lt.add_row(f"{label}: {len(rows)}", *(f"{_mean(rows, k):.3f}" for k in (
                "syncformer_corr", "syncformer_amplitude", "ridge_corr", "ridge_whole_corr", "ridge_own_corr")))
        console.print(lt)
    if "modes" in sections:
        console.print("[bold]other modes[/bold] with the base model ...")
        mode_results[:] = mode_rows(storage, settings, base, features, cache, scratch)
        mt = Table(title="video-driven lip sync, style transfer and face swap (base model)")
        mt.add_column("mode")
        mt.add_column("measure", justify="right")
        for r in mode_results:
            mt.add_row(r["mode"], ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "mode"))
        console.print(mt)
    save()
    console.print(f"results: {out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
