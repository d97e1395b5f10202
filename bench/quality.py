"""Quality benchmark (DESIGN section 6): fit on the first 70% of each clip, dub the last 30% with
its own audio, and score against the ground truth, next to baselines computed in the same run.

    make bench-quality                                  # every clip in ../shared/data/videos
    python -m bench.quality --clips speaker_map_5s.mp4 --sync-seconds 20 --gen-seconds 60

Per clip: a speaker model is fine-tuned from the base model on the *fit* frames within a fixed CPU
budget; then every *eval* frame is redrawn and composited into the frame by each method:

- ``resyncer``: Style-SyncFormer displacements from the clip's own audio -> rewired generator;
- ``oracle_mesh``: the generator driven by the tracked (ground-truth) mesh: the renderer's ceiling;
- ``static``: the reference crop's mouth pasted on every frame (no motion);
- ``retrieval``: the fit frame whose tracked lips are nearest to the predicted lips, pasted.

Metrics on the eval frames, in the 256-px aligned crop of output and ground truth: LMD (mouth
landmark distance after re-tracking both, pixels), lower-face PSNR and SSIM, mouth-opening
correlation with the ground truth (re-tracked), audio-visual offset (frames) and confidence
(mouth opening vs speech envelope), identity distance (dlib descriptor, lower = same person), mouth
sharpness (variance of the Laplacian in the box around the lips, output over ground truth, median).
Every method is composited like a dub (detail transfer included, ``tasks/detail.py``); the
``resyncer_no_detail`` row is the audio-driven output without it.

A leave-one-speaker-out table follows: the Style-SyncFormer trained on every clip but one, its
mouth-opening correlation on the one left out, next to ridge regression on the same Whisper features
(the frame at each video frame's time; the SyncFormer reads a window around it).
Then one row per other mode with the base model: video-driven (speaker_map_5s driven by
speaker_glasses_5s: correlation of the re-tracked output's mouth opening with the driver's and with
the original's) and style transfer (one audio spoken in a lively and a calm speaker's style: ratio
of predicted mouth-opening amplitudes next to the ratio of the sources' own) and face swapping
(speaker_map_5s shown with speaker_glasses_5s's identity: mean dlib distance of the output to each
person, the share of frames nearer the reference, and the head-pose error against the source).

    python -m bench.quality --sections modes      # only the modes rows (about a minute)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from skimage.metrics import structural_similarity

from catalogs.settings import Settings
from catalogs.storage import Storage
from models.renderer import mouth_mask
from models.resyncer import ReSyncer
from models.train_syncformer import SyncFormerTraining, train_syncformer
from tasks import model_store
from tasks.audio import load_audio, speech_envelope
from tasks.decode import VideoSource
from tasks.facemesh import FaceMeshTracker
from tasks.geometry import warp_crop
from tasks.identity import FaceIdentity
from tasks.landmarks import LIPS, mouth_opening
from tasks.detail import composite_redrawn, detail_factor
from tasks.qa import OutputObserver, av_offset, corr, laplacian_sharpness
from tasks.lipsync import (_to_tensor, crop_vertices, planned_meshes, redraw, reference_frame, reference_window,
                           renderable)
from tasks.train import MOUTH, PreparedClip, TrainingPlan, finetune_plan, fit, prepare_clip, sequences, track_for
from tasks.training_data import crop_matrices

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("resyncer", "resyncer_no_detail", "oracle_mesh", "retrieval", "static")
console = Console(width=180)


@dataclass
class Scores:
    lmd: float
    psnr: float
    ssim: float
    opening_corr: float
    av_offset: float
    av_conf: float
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


def split(c: PreparedClip, fit_fraction: float) -> tuple[PreparedClip, np.ndarray]:
    """The fit part as a prepared clip, and the eval frame indices (into the video)."""
    fit_mask = c.clip.frames < int(round(c.n_frames * fit_fraction))
    sub = PreparedClip(c.uri, c.clip.subset(fit_mask), c.audio[fit_mask], c.n_frames)
    return sub, c.clip.frames[~fit_mask]


def score(outputs: list[np.ndarray], truths: list[np.ndarray], masks256: np.ndarray, gt_marks: np.ndarray,
          env: np.ndarray, identity: FaceIdentity) -> Scores:
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
    opening = mouth_opening(marks)
    off, conf = av_offset(np.nan_to_num(opening, nan=np.nanmean(opening)), env, max_lag=5)
    return Scores(float(lmd), float(np.mean(psnrs)), float(np.mean(ssims)), corr(opening, mouth_opening(gt_marks)),
                  off, conf, float(np.mean(ids)) if ids else float("nan"),
                  float(np.median(sharp)) if sharp else float("nan"))


def bench_clip(storage: Storage, settings: Settings, base: ReSyncer, uri: str, features, cache, plan: TrainingPlan,
               fit_fraction: float, identity: FaceIdentity) -> tuple[dict[str, Scores], dict]:
    track = track_for(storage, settings, uri)
    size = base.size
    prepared = prepare_clip(storage, settings, uri, size, features, cache, track, base.config.syncformer.audio_offsets)
    fit_clip, eval_idx = split(prepared, fit_fraction)
    usable = renderable(track)
    eval_idx = eval_idx[usable[eval_idx]]

    # 1. The speaker model: the base fine-tuned on the fit frames only.
    model = ReSyncer(base.config, base.card)
    model.load_state_dict(base.state_dict())
    model.train()
    t0 = time.perf_counter()
    summary = fit(model, [fit_clip], plan, set_normalization=False, say=lambda s: None)
    model.eval()
    train_s = time.perf_counter() - t0

    # 2. Displacements for the whole clip from its own audio; style from the fit frames only.
    fit_usable = usable & (np.arange(track.n_frames) < int(round(track.n_frames * fit_fraction)))
    style = model.style_code(torch.from_numpy(np.nan_to_num(
        reference_window(track.displacements, fit_usable, model.config.syncformer.style_window))))
    tokens = np.zeros((track.n_frames, prepared.audio.shape[1]), np.float32)
    tokens[prepared.clip.frames] = prepared.audio
    predicted = model.displacements(torch.from_numpy(tokens), style).numpy()
    mats = crop_matrices(track, size, settings.crop_size)
    new_c, old_c = planned_meshes(track, predicted)
    oracle_c = old_c
    new_v, old_v = crop_vertices(track, new_c, usable, mats), crop_vertices(track, old_c, usable, mats)
    oracle_v = crop_vertices(track, oracle_c, usable, mats)
    pred_open, gt_open = mouth_opening(new_c[eval_idx]), mouth_opening(old_c[eval_idx])

    # 3. Reference crop (from the fit part) and the retrieval index.
    ref_i = reference_frame(track, fit_usable)
    fit_frames = fit_clip.clip.frames
    fit_lips = np.nan_to_num(track.displacements[fit_frames][:, LIPS].reshape(len(fit_frames), -1))
    pred_lips = predicted[eval_idx][:, LIPS].reshape(len(eval_idx), -1)
    nearest = fit_frames[np.argmin(((pred_lips[:, None] - fit_lips[None]) ** 2).sum(-1), axis=1)]
    fit_pos = {int(f): k for k, f in enumerate(fit_frames)}
    eval_pos = {int(f): k for k, f in enumerate(eval_idx)}

    outputs: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    truths: list[np.ndarray] = []
    with VideoSource(storage, uri) as video:
        codes = model.reference_codes(_to_tensor(warp_crop(video.frame(ref_i), mats[ref_i], size)[None])[0])
        ref_crop = fit_clip.clip.crops[fit_pos[ref_i]] if ref_i in fit_pos else warp_crop(video.frame(ref_i), mats[ref_i], size)
        ref_verts = fit_clip.clip.verts[fit_pos[ref_i]] if ref_i in fit_pos else old_v[ref_i]
        factor = detail_factor(mats[usable], settings.detail_max_factor) if settings.detail_transfer else 0
        wanted = set(int(i) for i in eval_idx)
        for chunk in video.chunks(settings.decode_chunk, start=int(eval_idx.min()), stop=int(eval_idx.max()) + 1):
            keep = [k for k, i in enumerate(chunk.indices) if int(i) in wanted]
            if not keep:
                continue
            ii = chunk.indices[keep]
            frames = chunk.frames[keep]
            crops = np.stack([warp_crop(f, mats[i], size) for f, i in zip(frames, ii)])
            gens = {"resyncer": redraw(model, crops, new_v[ii], old_v[ii], codes),
                    "oracle_mesh": redraw(model, crops, oracle_v[ii], old_v[ii], codes)}
            masks = mouth_mask(torch.from_numpy(old_v[ii]), size)[:, 0].numpy()
            near = [fit_pos[int(nearest[eval_pos[int(i)]])] for i in ii]
            pasted = {"retrieval": (fit_clip.clip.crops[near], fit_clip.clip.verts[near]),
                      "static": (np.repeat(ref_crop[None], len(ii), 0), np.repeat(ref_verts[None], len(ii), 0))}
            drawn = {"resyncer": (*gens["resyncer"], new_v[ii]), "oracle_mesh": (*gens["oracle_mesh"], oracle_v[ii]),
                     **{k: (c, masks, v) for k, (c, v) in pasted.items()}}
            # every method goes through the production compositor, detail transfer included
            for name, (gen, mask, verts) in drawn.items():
                outputs[name].extend(warp_crop(f, track.crop[i], settings.crop_size) for f, i in zip(
                    composite_redrawn(frames, gen, mats[ii], old_v[ii], verts, mask, factor, settings.detail_from), ii))
            gen, mask = gens["resyncer"]
            outputs["resyncer_no_detail"].extend(warp_crop(f, track.crop[i], settings.crop_size) for f, i in zip(
                composite_redrawn(frames, gen, mats[ii], old_v[ii], new_v[ii], mask, 0, 1.0), ii))
            truths.extend(warp_crop(f, track.crop[i], settings.crop_size) for f, i in zip(frames, ii))

    gt_marks = retrack(truths)
    masks256 = mouth_mask(torch.from_numpy(crop_vertices(track, old_c, usable, track.crop)[eval_idx]),
                          settings.crop_size)[:, 0].numpy()
    audio = load_audio(storage, uri, required=False)
    env = speech_envelope(audio, track.timestamps[eval_idx]) if audio is not None else np.zeros(len(eval_idx))
    scores = {m: score(outputs[m], truths, masks256, gt_marks, env, identity) for m in METHODS}
    info = {"fit_frames": int(len(fit_frames)), "eval_frames": int(len(eval_idx)), "train_s": round(train_s, 1),
            "sync_steps": summary["syncformer"]["steps"], "gen_steps": summary["generator"]["steps"],
            "mesh_opening_corr": corr(pred_open, gt_open)}
    return scores, info


def ridge(x: np.ndarray, y: np.ndarray, lam: float = 10.0) -> np.ndarray:
    x1 = np.hstack([x, np.ones((len(x), 1))])
    return np.linalg.solve(x1.T @ x1 + lam * np.eye(x1.shape[1]), x1.T @ y)


def _frame_at_t(model: ReSyncer):
    """tokens (T, k * d) -> (T, d): the feature frame at the video frame's own time."""
    cfg = model.config.syncformer
    k = cfg.audio_offsets.index(0) if 0 in cfg.audio_offsets else 0
    return lambda tokens: tokens[:, k * cfg.audio_dim:(k + 1) * cfg.audio_dim]


def leave_one_speaker_out(clips: list[PreparedClip], tracks: list, base: ReSyncer, seconds: float) -> list[dict]:
    rows = []
    # ridge reads the Whisper frame at each video frame's time (the 0.42 reference), the
    # offset-0 block of the SyncFormer's tokens: on the whole window it overfits (7 x 384 inputs)
    at_t = _frame_at_t(base)
    for k, held in enumerate(clips):
        train = [c for j, c in enumerate(clips) if j != k]
        model = ReSyncer(base.config, base.card).syncformer
        seqs = sequences(train)
        train_syncformer(model, seqs, torch.from_numpy(LIPS),
                         SyncFormerTraining(steps=5000, time_budget_s=seconds, eval_every=50, patience=6), mouth=MOUTH)
        track = tracks[k]
        shot_t = track.templates[track.shot_index][held.clip.frames]
        gt_open = mouth_opening(shot_t + held.clip.disp)
        with torch.no_grad():
            usable = np.ones(len(held.clip), bool)
            style = model.style(torch.from_numpy(reference_window(held.clip.disp, usable, model.cfg.style_window))[None])
            pred = model(torch.from_numpy(held.audio)[None], style)[0].numpy()
        syn = corr(mouth_opening(shot_t + pred), gt_open)
        x = np.concatenate([at_t(c.audio) for c in train])
        y = np.concatenate([mouth_opening(tracks[j].templates[tracks[j].shot_index][c.clip.frames] + c.clip.disp)
                            for j, c in enumerate(clips) if j != k])
        w = ridge(x, y)
        r = corr(np.hstack([at_t(held.audio), np.ones((len(held.audio), 1))]) @ w, gt_open)
        rows.append({"clip": Path(held.uri).name, "syncformer_corr": syn, "ridge_corr": r})
        console.print(f"  LOSO {Path(held.uri).name}: syncformer {syn:.3f}, ridge {r:.3f}")
    return rows


def report_quality(per_clip: dict[str, dict], names: list[str], base: ReSyncer, args: argparse.Namespace) -> None:
    """The mean table over clips and the per-clip table."""
    t = Table(title=f"quality on the last {1 - args.fit_fraction:.0%} of each clip (base {base.version}, per-speaker "
                    f"budget {args.sync_seconds:.0f}+{args.gen_seconds:.0f} s CPU); mean over {len(names)} clips")
    for col in ("method", "LMD px ↓", "lower PSNR ↑", "lower SSIM ↑", "opening corr ↑", "|AV offset| ↓", "AV conf ↑",
                "identity dist ↓", "mouth sharpness ↑"):
        t.add_column(col, justify="right")
    for m in METHODS:
        vals = {k: np.nanmean([abs(per_clip[c][m][k]) if k == "av_offset" else per_clip[c][m][k] for c in names])
                for k in Scores.__dataclass_fields__}
        t.add_row(m, f"{vals['lmd']:.2f}", f"{vals['psnr']:.2f}", f"{vals['ssim']:.3f}", f"{vals['opening_corr']:.3f}",
                  f"{vals['av_offset']:.2f}", f"{vals['av_conf']:.3f}", f"{vals['identity']:.3f}",
                  f"{vals['sharpness']:.3f}")
    console.print(t)
    per = Table(title="per clip: resyncer (oracle mesh) / static")
    for col in ("clip", "fit/eval frames", "train s", "LMD", "PSNR", "SSIM", "opening corr", "mesh-opening corr",
                "sharpness"):
        per.add_column(col, justify="right")
    for c in names:
        r, o, s, i = per_clip[c]["resyncer"], per_clip[c]["oracle_mesh"], per_clip[c]["static"], per_clip[c]["info"]
        per.add_row(c, f"{i['fit_frames']}/{i['eval_frames']}", f"{i['train_s']:.0f}",
                    f"{r['lmd']:.2f} ({o['lmd']:.2f}) / {s['lmd']:.2f}", f"{r['psnr']:.2f} ({o['psnr']:.2f}) / {s['psnr']:.2f}",
                    f"{r['ssim']:.3f} ({o['ssim']:.3f}) / {s['ssim']:.3f}",
                    f"{r['opening_corr']:.3f} ({o['opening_corr']:.3f}) / {s['opening_corr']:.3f}",
                    f"{i['mesh_opening_corr']:.3f}",
                    f"{r['sharpness']:.3f} ({o['sharpness']:.3f}) / {s['sharpness']:.3f}")
    console.print(per)



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
    ap.add_argument("--clips", nargs="*", default=None, help="clip names in ../shared/data/videos (default: all)")
    ap.add_argument("--model", default=None, help="base model folder (default: the bundled base)")
    ap.add_argument("--sync-seconds", type=float, default=20.0, help="per-speaker Style-SyncFormer budget")
    ap.add_argument("--gen-seconds", type=float, default=60.0, help="per-speaker generator budget")
    ap.add_argument("--loso-seconds", type=float, default=40.0, help="Style-SyncFormer budget per left-out speaker (0: skip)")
    ap.add_argument("--fit-fraction", type=float, default=0.7)
    ap.add_argument("--sections", default="quality,loso,modes", help="comma-separated tables to run: quality, loso, modes")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / ".work" / "bench-root"),
                    help="storage root for cached tracks and features")
    args = ap.parse_args()
    torch.set_num_threads(2)
    settings = Settings(root=args.root, allowed_roots=[str(SHARED), args.root])
    storage = Storage(settings)
    base = model_store.load_model(settings, args.model)
    features, cache = model_store.features_for(settings, base), model_store.feature_cache(settings)
    names = args.clips or sorted(p.name for p in (SHARED / "videos").glob("*.mp4"))
    sections = set(args.sections.split(","))
    plan = finetune_plan(base.config.name)
    plan.syncformer.time_budget_s, plan.generator.time_budget_s = args.sync_seconds, args.gen_seconds
    identity = FaceIdentity()
    started = time.perf_counter()
    per_clip: dict[str, dict] = {}
    for name in names if "quality" in sections else []:
        console.print(f"[bold]{name}[/bold]: fine-tune on the first {args.fit_fraction:.0%}, dub the rest ...")
        scores, info = bench_clip(storage, settings, base, str(SHARED / "videos" / name), features, cache, plan,
                                  args.fit_fraction, identity)
        per_clip[name] = {"info": info, **{m: s.__dict__ for m, s in scores.items()}}
    if per_clip:
        report_quality(per_clip, names, base, args)

    loso = []
    if args.loso_seconds > 0 and "loso" in sections:
        console.print("[bold]leave-one-speaker-out[/bold] (Style-SyncFormer vs ridge on the Whisper frame at t) ...")
        uris = [str(SHARED / "videos" / n) for n in names]
        tracks = [track_for(storage, settings, u) for u in uris]
        clips = [prepare_clip(storage, settings, u, base.size, features, cache, tr, base.config.syncformer.audio_offsets)
                 for u, tr in zip(uris, tracks)]
        loso = leave_one_speaker_out(clips, tracks, base, args.loso_seconds)
        lt = Table(title=f"leave-one-speaker-out mouth-opening correlation ({args.loso_seconds:.0f} s per fold)")
        for col in ("held-out clip", "Style-SyncFormer", "ridge (Whisper frame at t)"):
            lt.add_column(col, justify="right")
        for r in loso:
            lt.add_row(r["clip"], f"{r['syncformer_corr']:.3f}", f"{r['ridge_corr']:.3f}")
        lt.add_row("mean", f"{np.nanmean([r['syncformer_corr'] for r in loso]):.3f}",
                   f"{np.nanmean([r['ridge_corr'] for r in loso]):.3f}")
        console.print(lt)
    mode_results = []
    if "modes" in sections:
        console.print("[bold]other modes[/bold] with the base model ...")
        scratch = Path(args.root) / "bench-modes"
        scratch.mkdir(parents=True, exist_ok=True)
        mode_results = mode_rows(storage, settings, base, features, cache, scratch)
        mt = Table(title="video-driven lip sync, style transfer and face swap (base model)")
        mt.add_column("mode")
        mt.add_column("measure", justify="right")
        for r in mode_results:
            mt.add_row(r["mode"], ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "mode"))
        console.print(mt)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"quality-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"base": base.version, "args": vars(args), "clips": per_clip, "loso": loso, "modes": mode_results,
                               "wall_s": time.perf_counter() - started}, indent=2, default=float))
    console.print(f"results: {out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
