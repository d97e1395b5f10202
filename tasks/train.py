"""Training ReSyncer from videos: the base model over many speakers, and per-speaker fine-tuning.

This module turns videos into what the training loops in ``models/`` read (aligned crops, meshes
rendered into them, lower-face masks, displacements, audio features at the frame times) and runs
them. Tracking is cached per video like everywhere else, so re-training on the same footage costs
only the training.

We are data-limited: the loops hold out the end of every clip, stop early on it and keep the best
weights. A speaker model starts from the base and trains on that speaker's footage only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from catalogs.errors import ResyncError
from catalogs.settings import Settings
from catalogs.storage import Storage
from models.audio_features import AudioFeatures, FeatureCache, frame_tokens
from models.config import get_config, replace
from models.renderer import face_mask, mouth_mask, render_mesh
from models.resyncer import ModelCard, ReSyncer
from models.readout import MotionReadout, fit_readout
from models.sync_expert import ExpertSyncLoss
from models.train_generator import GeneratorData, GeneratorTraining, train_discriminator, train_generator
from models.train_syncformer import Sequence, SyncFormerTraining, train_syncformer
from tasks.audio import load_audio, speed_perturbed
from tasks.landmarks import INNER_LIP_RING, LIPS, LOWER_LIP_INNER, UPPER_LIP_INNER, mouth_opening
from tasks.dub_plan import fit_audio_length, renderable, video_duration
from tasks.qa import corr
from tasks.sync import audio_embedding, expert_audio_features, expert_sync_loss
from tasks.track import TrackResult, track_cached
from tasks.training_data import ClipData, load_clip

log = logging.getLogger(__name__)


@dataclass
class PreparedClip:
    uri: str
    clip: ClipData           # the usable frames, crops at the model's size
    audio: np.ndarray        # (N, token_dim) audio tokens at those frames' times (frame_tokens)
    n_frames: int            # frames in the whole video (for time-based splits)
    speaker: str | None = None  # who speaks (validation holds out whole speakers)
    held_out: bool = False   # a held-out speaker's clip: validation only
    sync_audio: np.ndarray | None = None  # (N, D) the sync expert's embedding of the audio at those frames
    voices: np.ndarray | None = None  # (K, N, token_dim) audio tokens of the track speed-perturbed by K factors


def track_for(storage: Storage, settings: Settings, uri: str) -> TrackResult:
    """The (cached) track of a video, keyed by its content."""
    return track_cached(storage, settings, uri, storage.sha256(uri))[0]


def prepare_clip(storage: Storage, settings: Settings, uri: str, size: int, features: AudioFeatures,
                 cache: FeatureCache | None = None, track: TrackResult | None = None,
                 audio_offsets: tuple[int, ...] = (0,), sync_loss: ExpertSyncLoss | None = None,
                 voice_factors: tuple[float, ...] = ()) -> PreparedClip:
    """Crops of size ``size`` and audio tokens reading the feature frames ``audio_offsets`` (the
    model config's) around every usable frame; with ``sync_loss``, also its expert's audio embedding;
    with ``voice_factors``, the tokens of the track in those speed-perturbed voices, at the same frames."""
    track = track or track_for(storage, settings, uri)
    clip = load_clip(storage, uri, track, size, settings.crop_size, usable=renderable(track), chunk=settings.decode_chunk)
    audio = load_audio(storage, uri, required=False)
    samples = fit_audio_length(audio.samples if audio is not None else np.zeros(0, np.float32), video_duration(track))
    feats = cache.get_or_compute(samples, features) if cache else features(samples)
    tokens = frame_tokens(feats, clip.timestamps, features.rate_hz, features.offset_s, audio_offsets)
    sync_audio = None
    if sync_loss is not None:
        same = features.name == expert_audio_features(sync_loss.expert.config).name
        sync_audio = audio_embedding(sync_loss.expert, samples, clip.timestamps, feats if same else None).numpy()
    voices = [voice_tokens(samples, f, clip.timestamps, features, cache, audio_offsets) for f in voice_factors]
    return PreparedClip(uri, clip, tokens, track.n_frames, sync_audio=sync_audio,
                        voices=np.stack(voices) if voices else None)


def voice_tokens(samples: np.ndarray, factor: float, timestamps: np.ndarray, features: AudioFeatures,
                 cache: FeatureCache | None, audio_offsets: tuple[int, ...]) -> np.ndarray:
    """Audio tokens of the track in another voice (``speed_perturbed`` by ``factor``), read at the
    perturbed times of the same video frames: what is said at each frame is unchanged."""
    perturbed, exact = speed_perturbed(samples, factor)
    feats = cache.get_or_compute(perturbed, features) if cache else features(perturbed)
    return frame_tokens(feats, np.asarray(timestamps) / exact, features.rate_hz, features.offset_s, audio_offsets)


def sequences(clips: list[PreparedClip], min_length: int = 16) -> list[Sequence]:
    """Contiguous runs of usable frames: the SyncFormer reads motion over time, so no gaps inside."""
    out = []
    for c in clips:
        breaks = np.flatnonzero(np.diff(c.clip.frames) != 1) + 1
        for run in np.split(np.arange(len(c.clip)), breaks):
            if len(run) >= min_length:
                disp = np.nan_to_num(c.clip.disp[run])
                out.append(Sequence(torch.from_numpy(c.audio[run]), torch.from_numpy(disp),
                                    torch.from_numpy(c.clip.canonical[run] - disp), held_out=c.held_out,
                                    sync_audio=None if c.sync_audio is None else torch.from_numpy(c.sync_audio[run]),
                                    voices=None if c.voices is None else torch.from_numpy(c.voices[:, run])))
    return out


def generator_data(clips: list[PreparedClip], batch: int = 64) -> GeneratorData:
    """Stack every usable frame: crops in [-1, 1], the tracked mesh rendered, the lower-face and
    whole-face masks."""
    crops, meshes, masks, faces, verts_all, clip_ids, times, held = [], [], [], [], [], [], [], []
    for k, c in enumerate(clips):
        size = c.clip.size
        for lo in range(0, len(c.clip), batch):
            verts = torch.from_numpy(c.clip.verts[lo:lo + batch])
            meshes.append(render_mesh(verts, size))
            masks.append(mouth_mask(verts, size))
            faces.append(face_mask(verts, size))
            verts_all.append(verts.float())
        crops.append(torch.from_numpy(c.clip.crops).permute(0, 3, 1, 2).float().div(127.5).sub(1))
        clip_ids.append(torch.full((len(c.clip),), k, dtype=torch.long))
        times.append(torch.from_numpy(c.clip.frames / max(c.n_frames - 1, 1)).float())
        held.append(torch.full((len(c.clip),), c.held_out, dtype=torch.bool))
    return GeneratorData(torch.cat(crops), torch.cat(meshes), torch.cat(masks), torch.cat(clip_ids), torch.cat(times),
                         torch.cat(faces), torch.cat(verts_all), torch.cat(held))


# Without speaker labels the base holds out the last 30% of every clip. With them (the base recipe:
# ../shared/data/train/ and its data card, or a catalog's speaker_id) whole speakers are held out,
# about this share of the footage, so the base is selected on people it never trained on.
BASE_HOLDOUT = 0.3
VAL_SPEAKER_SHARE = 0.15
# Weight of the mouth-opening concordance loss in the Style-SyncFormer recipes. On train/'s held-out
# speakers (two seeds, 200 s each) it raised the concordance the recipe selects by and the
# mouth-opening correlation, for both seeds (0.01 and 0.05 scored alike).
OPENING_WEIGHT = 0.02
# A quarter of every batch trains face swapping (the whole face masked, drawn from the reference):
# the recipe that lets one model do lip sync and face swaps (DESIGN section 2).
SWAP_SHARE = 0.25
# Half the lip-sync samples are masked as a dub masks them, this frame's lower face joined with
# another's of the same clip, so the generator learns to paint below a jaw that closes.
JAW_SHARE = 0.5
# With ``--voice-share S`` a base's Style-SyncFormer also hears every training clip speed-perturbed
# by these factors (pitch and formants 10% lower and higher) in that share of its training windows,
# so that the motion cannot be keyed on the voices of the 44 people it trains on. Off in the recipe:
# on train/'s held-out speakers (fresh Style-SyncFormers, five seeds) 0.5 raised the held-out
# mouth-opening correlation for every seed, but the base trained with it dubbed the unseen speakers
# worse (correlation 0.42 -> 0.29, smaller mouths; README, training). Fine-tunes hear one voice.
VOICE_FACTORS = (0.9, 1.1)
VOICE_SHARE = 0.0


# The motion read-out (models/readout.py), fitted only when a base is asked for one (0: none; a
# resumed model's is kept). Measured with 4 directions of lip motion, ridge penalty 1 per training row
# (chosen on train/ alone: speaker-disjoint five folds, last 30% of each held-out clip), and not kept:
# on the unseen speakers its dubs followed the real mouths less well (README, "A linear read-out").
# Its basis follows the lips (LIPS and the inner-lip ring weigh 1, every other vertex READOUT_FACE_WEIGHT):
# over the whole face the first directions were head and brow motion, and the mouth read worse.
READOUT_COMPONENTS = 0
READOUT_MEASURED_COMPONENTS = 4
READOUT_PENALTY = 1.0
READOUT_FACE_WEIGHT = 0.02


@dataclass
class TrainingPlan:
    """Budgets and recipes of one training job; defaults are the CPU base recipe."""
    config: str = "cpu"
    syncformer: SyncFormerTraining = field(default_factory=lambda: SyncFormerTraining(
        steps=3000, time_budget_s=240, val_fraction=BASE_HOLDOUT, opening_weight=OPENING_WEIGHT,
        voice_share=VOICE_SHARE))
    generator: GeneratorTraining = field(default_factory=lambda: GeneratorTraining(
        steps=20000, time_budget_s=1200, eval_every=200, patience=20, val_fraction=BASE_HOLDOUT, swap_share=SWAP_SHARE,
        jaw_share=JAW_SHARE))
    seed: int = 0
    # Seconds of a last phase that trains the discriminator alone against the finished generator (0: none),
    # so that the model carries a D that knows its own drawings (fine-tunes start the adversarial game with it).
    discriminator_s: float = 0.0
    voice_factors: tuple[float, ...] = VOICE_FACTORS  # speed perturbations the Style-SyncFormer hears (voice_share)
    val_speaker_share: float = VAL_SPEAKER_SHARE  # footage share of whole speakers held out (0: the end of every clip)
    # Which speakers are held out does not follow ``seed``: models trained with other seeds (the
    # members of a Style-SyncFormer ensemble) are selected on the same people, none trained on them.
    split_seed: int = 0

    # The linear motion read-out (models/readout.py) a base fits after its training, in closed form
    # (0 components: none is fitted; a resumed model's is kept; READOUT_MEASURED_COMPONENTS were measured).
    readout_components: int = READOUT_COMPONENTS
    readout_penalty: float = READOUT_PENALTY

    def heard_voices(self) -> tuple[float, ...]:
        """The speed factors to prepare clips with: none when the Style-SyncFormer takes no step or hears no other voice."""
        return self.voice_factors if self.syncformer.steps > 0 and self.syncformer.voice_share > 0 else ()

    def with_budgets(self, syncformer_s: float | None, generator_s: float | None,
                     discriminator_s: float | None = None) -> "TrainingPlan":
        """Time budgets in seconds (None keeps the recipe's); 0 leaves that part as it is: no step
        is taken, its held-out metric is still measured. ``discriminator_s``: the D-only phase."""
        if discriminator_s is not None:
            self.discriminator_s = discriminator_s
        for part, seconds in ((self.syncformer, syncformer_s), (self.generator, generator_s)):
            if seconds is not None:
                part.time_budget_s = seconds
                if seconds <= 0:
                    part.steps = 0
        return self


# The per-speaker budget, in CPU seconds (5 CPU-minutes in all): what a nightly run can spend on a
# speaker before dubbing them, and what bench/quality's personalized row is measured at.
FINETUNE_SYNCFORMER_S = 60
FINETUNE_GENERATOR_S = 240
# The adversarial weight of a fine-tune whose base carries a trained discriminator (the recipe's 0.05
# otherwise). Chosen on the base's held-out train/ speakers (skyreels_1, pcavs_audio_741400104: the
# generator fine-tuned on a clip's first 70%, its redrawing of the last 30% scored; never videos/):
# with it the drawn mouth came out sharper than with the fresh-D recipe on both, and sharper than
# with the trained D at 0.05, for a little lower-face PSNR (which rewards blur). README, training.
FINETUNE_TRAINED_D_ADV_WEIGHT = 0.3


def finetune_plan(config: str = "cpu", trained_discriminator: bool = False) -> TrainingPlan:
    """The per-speaker recipe: smaller steps from the base. With a fresh discriminator the adversarial
    game joins after 100 steps (time for it to learn something); from a base that carries a trained
    one (``trained_discriminator``), it plays from the first step, with more weight."""
    plan = TrainingPlan(config=config, syncformer=SyncFormerTraining(steps=1500, time_budget_s=FINETUNE_SYNCFORMER_S,
                                                                     lr=1e-4, opening_weight=OPENING_WEIGHT),
                        voice_factors=(),
                        generator=GeneratorTraining(steps=5000, time_budget_s=FINETUNE_GENERATOR_S, adv_start=100,
                                                    lr=1e-3, d_lr=1e-3, swap_share=SWAP_SHARE,
                                                    jaw_share=JAW_SHARE))
    if trained_discriminator:
        plan.generator.adv_start, plan.generator.adv_weight = 0, FINETUNE_TRAINED_D_ADV_WEIGHT
    return plan


def finetune_plan_for(base: ReSyncer | None) -> TrainingPlan:
    """The per-speaker recipe for fine-tuning from ``base`` (None: from scratch, cpu configuration)."""
    return finetune_plan(base.config.name if base else "cpu", base is not None and base.discriminator_trained)


def _lips() -> torch.Tensor:
    return torch.from_numpy(LIPS)


# The inner-lip vertices whose gap is the mouth opening: the Style-SyncFormer is selected on its correlation.
MOUTH = (UPPER_LIP_INNER, LOWER_LIP_INNER)


def perceptual_loss(settings: Settings) -> torch.nn.Module | None:
    """The VGG perceptual loss, only when local weights are configured (nothing is downloaded)."""
    if not settings.perceptual_weights:
        return None
    from models.losses import VGGPerceptual

    return VGGPerceptual(settings.perceptual_weights)


def sync_loss_for(plan: TrainingPlan) -> ExpertSyncLoss | None:
    """The bundled sync expert as a loss when the plan's Style-SyncFormer recipe weighs it."""
    return expert_sync_loss() if plan.syncformer.sync_weight > 0 else None


def fit(model: ReSyncer, clips: list[PreparedClip], plan: TrainingPlan, set_normalization: bool,
        say: Callable[[str], None] = log.info, perceptual: torch.nn.Module | None = None,
        sync_loss: ExpertSyncLoss | None = None) -> dict:
    """Train both learned parts on prepared clips (with ``sync_loss``: prepared with it); returns their summaries."""
    torch.manual_seed(plan.seed)
    seqs = sequences(clips)
    if not seqs:
        raise ValueError("no clip has a run of usable face frames long enough to train on")
    voices = seqs[0].voices is not None and plan.syncformer.voice_share > 0
    say(f"Style-SyncFormer: {len(seqs)} sequences, {sum(len(s.audio) for s in seqs)} frames"
        + (f", {plan.syncformer.voice_share:.0%} of its windows heard in voices sped by {plan.voice_factors}" if voices else ""))
    sync = train_syncformer(model.syncformer, seqs, _lips(), plan.syncformer, set_normalization=set_normalization,
                            mouth=MOUTH, sync_loss=sync_loss)
    say(f"Style-SyncFormer: {sync['steps']} steps in {sync['seconds']:.0f} s, held-out mouth-opening correlation "
        f"{sync['val_opening_corr_start']:.3f} -> {sync['val_opening_corr_best']:.3f} (concordance "
        f"{sync['val_opening_ccc_start']:.3f} -> {sync['val_opening_ccc_best']:.3f}), vertex error "
        f"{sync['val_vertex_start']:.4g} -> {sync['val_vertex_best']:.4g}")
    data = generator_data(clips)
    say(f"generator: {len(data)} frames at {model.size} px")
    gen = train_generator(model.generator, model.discriminator, data, plan.generator, perceptual)
    say(f"generator: {gen['steps']} steps in {gen['seconds']:.0f} s, held-out lower-face PSNR "
        f"{gen['val_lower_psnr_start']:.2f} -> {gen['val_lower_psnr_best']:.2f} dB"
        + (f", whole-face (swap) PSNR {gen['val_face_psnr_start']:.2f} -> {gen['val_face_psnr_best']:.2f} dB"
           if "val_face_psnr_best" in gen else ""))
    if voices:
        sync = {**sync, "voice_share": plan.syncformer.voice_share, "voice_factors": list(plan.voice_factors)}
    summary = {"syncformer": {k: v for k, v in sync.items() if k != "log"},
               "generator": {k: v for k, v in gen.items() if k != "log"},
               "log": {"syncformer": sync["log"], "generator": gen["log"]}}
    if plan.discriminator_s > 0:
        disc = train_discriminator(model.generator, model.discriminator, data,
                                   replace(plan.generator, steps=10 ** 9, time_budget_s=plan.discriminator_s, log=[]))
        say(f"discriminator alone: {disc['steps']} steps in {disc['seconds']:.0f} s, held-out real/drawn accuracy "
            f"{disc['val_accuracy_start']:.3f} -> {disc['val_accuracy_end']:.3f}")
        summary["discriminator"] = {k: v for k, v in disc.items() if k != "log"}
        summary["log"]["discriminator"] = disc["log"]
    played = gen["steps"] > plan.generator.adv_start   # the adversarial game joined the generator's steps
    model.discriminator_trained = model.discriminator_trained or played or plan.discriminator_s > 0
    return summary


def held_out_speakers(frames: dict[str, int], share: float, seed: int) -> list[str]:
    """Whole speakers for validation, in a seeded order until they hold ``share`` of the frames (at
    least one speaker, never all); ``frames``: speaker -> frames. Returns them sorted."""
    speakers = sorted(frames)
    if share <= 0 or len(speakers) < 2:
        return []
    total = sum(frames.values())
    held, count = [], 0
    for s in np.random.default_rng(seed).permutation(speakers).tolist():
        if count >= share * total or len(held) == len(speakers) - 1:
            break
        held.append(s)
        count += frames[s]
    return sorted(held)


def hold_out_speakers(clips: list[PreparedClip], share: float, seed: int) -> list[str]:
    """Mark whole speakers' clips as validation (``held_out_speakers``). Returns the held-out speakers."""
    speakers = sorted({c.speaker for c in clips if c.speaker is not None})
    held = held_out_speakers({s: sum(len(c.clip) for c in clips if c.speaker == s) for s in speakers}, share, seed)
    for c in clips:
        c.held_out = c.speaker in held
    return held


def _save(model: ReSyncer, summary: dict, plan: TrainingPlan, start: float, out_dir: str | Path) -> tuple[ReSyncer, dict]:
    """Record the job's metrics in the model card and write the checkpoint."""
    summary["wall_s"] = time.monotonic() - start
    summary.setdefault("holdout", plan.generator.val_fraction)
    model.card.metrics = {k: summary[k] for k in ("syncformer", "generator", "discriminator", "readout", "wall_s")
                          if k in summary}
    model.save(out_dir, include_discriminator=model.discriminator_trained)   # a never-trained D is not worth keeping
    return model, summary


def prepare_labelled_clips(storage: Storage, settings: Settings, uris: list[str], speakers: list[str] | None,
                           model: ReSyncer, features: AudioFeatures, cache: FeatureCache | None = None,
                           sync_loss: ExpertSyncLoss | None = None,
                           say: Callable[[str], None] = log.info,
                           voice_factors: tuple[float, ...] = ()) -> list[PreparedClip]:
    """Each video prepared for ``model`` and labelled with its speaker (``speakers``: one per video, or
    None), heard also in the ``voice_factors`` voices. One unusable video does not stop a base: it is
    left out, and said so."""
    clips = []
    for k, u in enumerate(uris):
        try:
            clip = prepare_clip(storage, settings, u, model.size, features, cache,
                                audio_offsets=model.config.syncformer.audio_offsets, sync_loss=sync_loss,
                                voice_factors=voice_factors)
        except ResyncError as e:
            say(f"left out {u}: {e} [{e.error_class}]")
            continue
        clip.speaker = speakers[k] if speakers is not None else None
        clips.append(clip)
        say(f"prepared {k + 1}/{len(uris)}: {Path(u).name} ({len(clip.clip)} usable frames)")
    return clips


def train_base(storage: Storage, settings: Settings, uris: list[str], out_dir: str | Path, features: AudioFeatures,
               cache: FeatureCache | None = None, plan: TrainingPlan | None = None,
               say: Callable[[str], None] = log.info, resume: ReSyncer | None = None,
               fresh_syncformer: bool = False, speakers: list[str] | None = None) -> tuple[ReSyncer, dict]:
    """A base model pooled over many speakers' videos, saved to ``out_dir``. ``resume`` continues
    from a checkpoint's weights (and keeps its displacement normalisation); with ``fresh_syncformer``
    only its generator and discriminator are kept and the Style-SyncFormer starts afresh in the
    plan's configuration (for when the SyncFormer's inputs or shape changed). ``speakers`` (one per
    video) lets validation hold out whole speakers (``plan.val_speaker_share`` of the footage)."""
    if speakers is not None and len(speakers) != len(uris):
        raise ValueError(f"{len(speakers)} speaker labels for {len(uris)} videos")
    plan = plan or TrainingPlan()
    start = time.monotonic()
    torch.manual_seed(plan.seed)   # the seed decides the fresh parts' first weights too, not only the batches
    card = ModelCard(kind="base", audio_features=features.name, training_data=list(uris),
                     parent=resume.version if resume else None)
    if resume is not None:
        if resume.card.audio_features != features.name and not fresh_syncformer:
            raise ValueError(f"cannot resume: {resume.version} reads audio features {resume.card.audio_features!r}, "
                             f"not {features.name!r} (a fresh Style-SyncFormer can learn the new ones)")
        config = replace(resume.config, syncformer=get_config(plan.config).syncformer) if fresh_syncformer else resume.config
        if not resume.discriminator_trained:   # nothing of its D to keep: the configuration's own, fresh
            config = replace(config, discriminator=get_config(plan.config).discriminator)
        model = ReSyncer(config, card)
        kept = {k: v for k, v in resume.state_dict().items() if not (fresh_syncformer and k.startswith("syncformer."))
                and (resume.discriminator_trained or not k.startswith("discriminator."))}
        missing = model.load_state_dict(kept, strict=False).missing_keys
        fresh = [k for k in missing
                 if not (k.startswith("discriminator.") or fresh_syncformer and k.startswith("syncformer."))]
        if fresh:
            raise ValueError(f"cannot resume from {resume.version}: it lacks {len(fresh)} weights, e.g. {fresh[0]}")
        model.discriminator_trained = resume.discriminator_trained
        model.train()
    else:
        model = ReSyncer.new(plan.config, card)
    sync_loss = sync_loss_for(plan)
    clips = prepare_labelled_clips(storage, settings, uris, speakers, model, features, cache, sync_loss, say,
                                   plan.heard_voices())
    if not clips:
        raise ValueError("none of the videos could be prepared for training")
    held = hold_out_speakers(clips, plan.val_speaker_share, plan.split_seed)
    say(f"prepared {len(clips)} clips in {time.monotonic() - start:.0f} s; validation: "
        + (f"{len(held)} held-out speakers ({', '.join(held)})" if held else f"the last {plan.generator.val_fraction:.0%} of every clip"))
    summary = fit(model, clips, plan, set_normalization=resume is None or fresh_syncformer, say=say,
                  perceptual=perceptual_loss(settings), sync_loss=sync_loss)
    if held:
        summary["holdout"] = {"speakers": held, "clips": [Path(c.uri).name for c in clips if c.held_out]}
    if plan.readout_components > 0:
        model.readout = fit_motion_readout(clips, plan, model.config.syncformer.n_vertices)
        summary["readout"] = readout_summary(model.readout, clips, plan, model.config.syncformer.style_window)
        say(f"motion read-out: {plan.readout_components} directions; held-out mouth-opening correlation "
            f"{summary['readout']['val_opening_corr']:.3f}")
    elif resume is not None and resume.readout is not None:
        model.readout = MotionReadout.from_state(resume.readout.state_dict())
    return _save(model, summary, plan, start, out_dir)


def readout_vertex_weights(n_vertices: int) -> torch.Tensor:
    """(V,) what the read-out's basis follows: the lips, and the rest of the face a little."""
    w = torch.full((n_vertices,), READOUT_FACE_WEIGHT)
    w[torch.from_numpy(np.concatenate([LIPS, INNER_LIP_RING]))] = 1.0
    return w


def _training_clips(clips: list[PreparedClip]) -> list[PreparedClip]:
    """The clips a base trains on: all but the held-out speakers' (all, when none is held out)."""
    return [c for c in clips if not c.held_out] or clips


def fit_motion_readout(clips: list[PreparedClip], plan: TrainingPlan, n_vertices: int) -> MotionReadout:
    """The read-out fitted on the clips that train (held-out speakers' clips only score it)."""
    fitted = _training_clips(clips)
    return fit_readout([torch.from_numpy(c.audio) for c in fitted], [torch.from_numpy(c.clip.disp) for c in fitted],
                       plan.readout_components, plan.readout_penalty, readout_vertex_weights(n_vertices))


def readout_summary(readout: MotionReadout, clips: list[PreparedClip], plan: TrainingPlan, window: int) -> dict:
    """How the read-out follows the held-out speakers' mouths: each clip's first ``window`` frames
    are its reference, the rest is scored (mean of the clips' mouth-opening correlations; NaN when no
    speaker is held out, as the read-out then saw every clip)."""
    scores = []
    with torch.no_grad():
        for c in (c for c in clips if c.held_out and len(c.clip) >= window + 16):
            pred = readout(torch.from_numpy(c.audio), torch.from_numpy(c.clip.disp[:window])).numpy()
            template = c.clip.canonical - c.clip.disp
            scores.append(corr(mouth_opening((template + pred)[window:]), mouth_opening(c.clip.canonical[window:])))
    scores = [r for r in scores if r == r]
    return {"components": plan.readout_components, "penalty": plan.readout_penalty,
            "frames": sum(len(c.clip) for c in _training_clips(clips)),
            "val_clips": len(scores), "val_opening_corr": float(np.mean(scores)) if scores else float("nan")}


def finetune_speaker(storage: Storage, settings: Settings, base: ReSyncer | None, uris: list[str], out_dir: str | Path,
                     features: AudioFeatures, speaker_id: str, cache: FeatureCache | None = None,
                     plan: TrainingPlan | None = None, say: Callable[[str], None] = log.info) -> tuple[ReSyncer, dict]:
    """A speaker model: the base (or a fresh model) trained further on one speaker's footage."""
    plan = plan or finetune_plan_for(base)
    start = time.monotonic()
    card = ModelCard(kind="speaker", speaker_id=speaker_id, parent=base.version if base else None,
                     audio_features=features.name, training_data=list(uris))
    if base is not None:
        if base.card.audio_features and base.card.audio_features != features.name:
            raise ValueError(f"base model reads audio features {base.card.audio_features!r}, not {features.name!r}")
        model = ReSyncer(base.config, card)
        if base.readout is not None:     # a speaker model reads the audio as its base did
            model.readout = MotionReadout.from_state(base.readout.state_dict())
        model.load_state_dict(base.state_dict())
        model.discriminator_trained = base.discriminator_trained
    else:
        model = ReSyncer.new(plan.config, card)
    model.train()
    sync_loss = sync_loss_for(plan)
    clips = [prepare_clip(storage, settings, u, model.size, features, cache,
                          audio_offsets=model.config.syncformer.audio_offsets, sync_loss=sync_loss) for u in uris]
    summary = fit(model, clips, plan, set_normalization=base is None, say=say, perceptual=perceptual_loss(settings),
                  sync_loss=sync_loss)
    return _save(model, summary, plan, start, out_dir)


def model_card(model: ReSyncer, summary: dict, command: str, has_discriminator: bool | None = None) -> str:
    """A short markdown card: what the model is, on what it was trained, how long, how well.
    ``has_discriminator``: whether its checkpoint keeps a D (default: whether its D was trained)."""
    s, g = summary["syncformer"], summary["generator"]
    has_discriminator = model.discriminator_trained if has_discriminator is None else has_discriminator
    data = "\n".join(f"- `{Path(u).name}`" for u in model.card.training_data)
    return f"""# ReSyncer {model.card.kind} model `{model.version}` ({model.config.name} configuration)

- Style-SyncFormer ({sum(p.numel() for p in model.syncformer.parameters()) / 1e6:.2f} M parameters) reading
  audio features `{model.card.audio_features}`; rewired generator
  ({sum(p.numel() for p in model.generator.parameters()) / 1e6:.2f} M parameters, {model.size}-px crops);
  {"discriminator kept for fine-tuning" if has_discriminator else "discriminator left out (fine-tuning starts a new one)"}. Weights: safetensors; version = content hash.
- Speaker: {model.card.speaker_id or "none (base model)"}; parent: {model.card.parent or "none (trained from scratch)"}.
- Trained with: `{command}`
- Wall time: {summary["wall_s"]:.0f} s on this machine (2 CPU cores), tracking and feature extraction included.

## Data

Self-reconstruction on these clips ({model_holdout(summary)}):

{data}

## Held-out metrics

| part | steps | seconds | start | best |
|---|---|---|---|---|
{_opening_row(s)}| Style-SyncFormer (lip-weighted vertex MSE, eye-distance units) | {s["steps"]} | {s["seconds"]:.0f} | {s["val_vertex_start"]:.4g} | {s["val_vertex_best"]:.4g} |
{_generator_rows(g, model.size)}{_swap_row(g, model.size)}{_discriminator_row(summary.get("discriminator"))}{_readout_row(summary.get("readout"))}
Quality against baselines on the held-out frames: `make bench-quality` (see the README).
"""


def _opening_row(s: dict) -> str:
    rows = ""
    if s.get("val_opening_ccc_best") is not None:
        rows += (f"| Style-SyncFormer (mouth-opening concordance correlation; selects the weights) | {s['steps']} | "
                 f"{s['seconds']:.0f} | {s['val_opening_ccc_start']:.3f} | {s['val_opening_ccc_best']:.3f} |\n")
    if s.get("val_opening_corr_best") is not None:
        rows += (f"| Style-SyncFormer (mouth-opening correlation) | {s['steps']} | {s['seconds']:.0f} | "
                 f"{s['val_opening_corr_start']:.3f} | {s['val_opening_corr_best']:.3f} |\n")
    return rows


def _generator_rows(g: dict, size: int) -> str:
    if not g.get("val_widened_masks"):
        return (f"| generator (lower-face PSNR, dB, {size}-px crop) | {g['steps']} | {g['seconds']:.0f} | "
                f"{g['val_lower_psnr_start']:.2f} | {g['val_lower_psnr_best']:.2f} |\n")
    return (f"| generator (lower-face PSNR, dB, {size}-px crop, masked as a dub masks it: with another frame's "
            f"lower face; selects the weights) | {g['steps']} | {g['seconds']:.0f} | {g['val_lower_psnr_start']:.2f} | "
            f"{g['val_lower_psnr_best']:.2f} |\n"
            f"| generator (lower-face PSNR, dB, {size}-px crop, each frame's own mask) | {g['steps']} | "
            f"{g['seconds']:.0f} | {g['val_own_mask_psnr_start']:.2f} | {g['val_own_mask_psnr_best']:.2f} |\n")


def _swap_row(g: dict, size: int) -> str:
    if "val_face_psnr_best" not in g:
        return ""
    return (f"| generator as face swap (whole-face PSNR, dB, {size}-px crop, reference from the same speaker) | "
            f"{g['steps']} | {g['seconds']:.0f} | {g['val_face_psnr_start']:.2f} | {g['val_face_psnr_best']:.2f} |\n")


def _readout_row(r: dict | None) -> str:
    if r is None:
        return ""
    return (f"| motion read-out, {r['components']} directions, ridge penalty {r['penalty']:g} per row, closed form on "
            f"{r['frames']} frames (held-out speakers' mouth-opening correlation, {r['val_clips']} clips) | - | - | - | "
            f"{r['val_opening_corr']:.3f} |\n")


def _discriminator_row(d: dict | None) -> str:
    if d is None:
        return ""
    return (f"| discriminator alone, against the finished generator (held-out real/drawn accuracy) | {d['steps']} | "
            f"{d['seconds']:.0f} | {d['val_accuracy_start']:.3f} | {d['val_accuracy_end']:.3f} |\n")


def model_holdout(summary: dict) -> str:
    """What was held out for early stopping and model selection, in words."""
    held = summary.get("holdout", BASE_HOLDOUT)
    if isinstance(held, dict):
        return (f"validation, early stopping and model selection on the held-out speakers {', '.join(held['speakers'])}: "
                f"their clips {', '.join(held['clips'])} were never trained on")
    return f"the last {held:.0%} of every clip held out for early stopping and model selection; never trained on"


__all__ = ["model_card", "PreparedClip", "TrainingPlan", "prepare_clip", "prepare_labelled_clips", "sequences", "generator_data", "fit", "train_base",
           "finetune_speaker", "finetune_plan", "finetune_plan_for", "track_for", "hold_out_speakers"]
