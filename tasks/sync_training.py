"""Training the sync expert on labelled videos (``resync model train-sync``).

Every video is tracked (cached like everywhere else) and its own audio read; its mouth windows
and audio windows become a ``SyncClip``. Whole speakers are held out for selection, so the expert
is chosen on people it never trained on, as it will be used. It must never train on what it then
judges: the bundled expert trains on ``../shared/data/train/`` only and is calibrated on ``videos/``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch

from catalogs.errors import ResyncError
from catalogs.settings import Settings
from catalogs.storage import Storage
from models.audio_features import AudioFeatures
from models.checkpoint import save_checkpoint
from models.sync_expert import SyncExpert, SyncExpertConfig, config_dict
from models.train_sync_expert import SyncClip, SyncExpertTraining, train_sync_expert
from tasks.audio import load_audio
from tasks.dub_plan import fit_audio_length, video_duration
from tasks.sync import audio_windows, expert_audio_features, mouth_features, mouth_windows
from tasks.train import held_out_speakers, track_for

log = logging.getLogger(__name__)


def sync_clip(storage: Storage, settings: Settings, uri: str, config: SyncExpertConfig,
              features: AudioFeatures | None = None) -> SyncClip:
    """The windows of one video with its own audio; frames without a face are not anchors."""
    track = track_for(storage, settings, uri)
    audio = load_audio(storage, uri, required=True)
    samples = fit_audio_length(audio.samples, video_duration(track))
    feats, ok = mouth_features(track.raw)
    windows, valid = mouth_windows(feats, ok & track.valid, config.window)
    mels = audio_windows(samples, track.timestamps, config, features)
    return SyncClip(torch.from_numpy(windows), torch.from_numpy(mels), torch.from_numpy(valid))


def train_sync(storage: Storage, settings: Settings, uris: list[str], speakers: list[str], out_dir: str | Path,
               training: SyncExpertTraining | None = None, val_share: float = 0.2,
               say: Callable[[str], None] = log.info, config: SyncExpertConfig | None = None,
               command: str = "") -> tuple[SyncExpert, dict]:
    """A sync expert trained on ``uris`` (one speaker label each), selected on held-out speakers,
    saved to ``out_dir`` with a model card. Returns the model and the training summary."""
    if len(speakers) != len(uris):
        raise ValueError(f"{len(speakers)} speaker labels for {len(uris)} videos")
    training = training or SyncExpertTraining()
    start = time.monotonic()
    config = config or SyncExpertConfig()
    clips, names, kept = [], [], []
    features = expert_audio_features(config)
    for u, s in zip(uris, speakers):
        try:
            clips.append(sync_clip(storage, settings, u, config, features))
        except ResyncError as e:  # one unusable video does not stop the training: left out, and said so
            say(f"left out {u}: {e} [{e.error_class}]")
            continue
        names.append(Path(u).name)
        kept.append(s)
    frames = {s: 0 for s in kept}
    for c, s in zip(clips, kept):
        frames[s] += int(c.valid.sum())
    held = held_out_speakers(frames, val_share, training.seed)
    for c, s in zip(clips, kept):
        c.held_out = s in held
    say(f"prepared {len(clips)} clips ({sum(frames.values())} mouth windows) in {time.monotonic() - start:.0f} s; "
        f"held out {len(held)} speakers: {', '.join(held)}")
    torch.manual_seed(training.seed)
    model = SyncExpert(config)
    summary = train_sync_expert(model, clips, training,
                                progress=lambda step, h: say(f"step {step}: held-out offset accuracy "
                                                             f"{h['offset_accuracy']:.3f}, confidence {h['confidence']:.3f}"))
    summary.update(wall_s=round(time.monotonic() - start, 1), held_out_speakers=held,
                   training_data=[n for n, s in zip(names, kept) if s not in held],
                   validation_data=[n for n, s in zip(names, kept) if s in held])
    version = save_checkpoint(out_dir, model.state_dict(), config_dict(model),
                              {k: v for k, v in summary.items() if k != "history"})
    summary["version"] = version
    (Path(out_dir) / "MODEL_CARD.md").write_text(expert_card(summary, training, config, command))
    return model, summary


def expert_card(summary: dict, training: SyncExpertTraining, config: SyncExpertConfig, command: str = "") -> str:
    """What the expert is, what it trained on, how it was selected."""
    b = summary["best"]
    made = f"\n\nMade with `{command}`." if command else ""
    return f"""# Sync expert `{summary['version']}`

SyncNet-style audio-visual sync expert (`models/sync_expert.py`): a mouth window of {config.window}
frames of mouth shape measures (lip, nose and chin landmark distances, `tasks/sync.py`) and
{config.audio_frames} frames of `{config.audio_features}` audio features (200 ms), embedded into one
space; the offset is searched over +-{config.max_offset} frames. It shares no weights with the
Style-SyncFormer (the Whisper encoder it reads is the frozen, bundled tiny.en).{made}

- Trained on {len(summary['training_data'])} clips, selected on {len(summary['validation_data'])} clips of
  {len(summary['held_out_speakers'])} held-out speakers ({', '.join(summary['held_out_speakers'])}).
- {summary['steps']} steps ({training.stretches} stretches of {training.length} frames each, every mouth
  window against the audio of every frame of its stretch), {summary['wall_s']:.0f} s wall on CPU.
- Best held-out step {b['step']}: offset found within one frame on {b['offset_accuracy']:.1%} of 2-s
  segments, mean confidence {b['confidence']:.3f} (selected on the lead of the true offset, {b['lead']:.3f}).

Training clips: {', '.join(f'`{n}`' for n in summary['training_data'])}.

Validation clips: {', '.join(f'`{n}`' for n in summary['validation_data'])}.
"""


__all__ = ["expert_card", "sync_clip", "train_sync"]
