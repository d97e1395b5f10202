"""Training the sync expert: in-sync mouth/audio pairs against shifted and other-clip audio.

Every step draws ``stretches`` stretches of ``length`` frames from the training clips; in each,
every mouth window is contrasted with the audio of every frame of its stretch (``contrastive_loss``):
the same voice at the wrong time, the only negative that teaches timing. One stretch's L mouth and
L audio embeddings give L x L pairs, so a step costs little for many negatives. Selection is on held-out speakers' clips
judged as a user would judge a video: 2-s segments, the offset found over +-``max_offset`` frames,
scored by how far the true offset leads the others (``evaluate``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from models.early_stopping import EarlyStopping
from models.sync_expert import SyncExpert, contrastive_loss, offset_distances

log = logging.getLogger(__name__)


@dataclass
class SyncClip:
    """One clip's windows: mouth (T, window, D), audio (T, frames, mels), valid mouth windows (T,)."""
    mouth: torch.Tensor
    audio: torch.Tensor
    valid: torch.Tensor
    held_out: bool = False


@dataclass
class SyncExpertTraining:
    steps: int = 8000
    time_budget_s: float | None = None
    stretches: int = 24          # per step
    length: int = 48             # frames per stretch
    mouth_noise: float = 0.05    # std of noise added to the mouth features (tracking jitter)
    audio_noise: float = 0.05    # std of noise added to the log-mel windows
    lr: float = 5e-4
    weight_decay: float = 0.05
    mouth_gain: tuple[float, float] = (0.6, 1.6)   # random motion amplitude: speakers articulate differently
    eval_every: int = 50
    patience: int = 12
    segment: int = 50            # frames per validation segment (2 s at 25 fps)
    seed: int = 0


def _segments(clips: list[SyncClip], length: int) -> list[tuple[int, int, int]]:
    return [(c, a, min(a + length, len(clip.valid))) for c, clip in enumerate(clips)
            for a in range(0, max(len(clip.valid) - length // 2, 1), length)]


@torch.no_grad()
def evaluate(model: SyncExpert, clips: list[SyncClip], segment: int) -> dict[str, float]:
    """Share of segments whose offset is found within one frame, their mean confidence, and the mean
    lead of the true offset: the smallest distance more than a frame away minus the smallest within
    a frame (positive where the offset is found; smooth where the share is not, so it selects)."""
    was_training = model.training
    model.eval()
    hits, confs, margins = [], [], []
    m = model.config.max_offset
    for c, a, b in _segments(clips, segment):
        clip = clips[c]
        if int(clip.valid[a:b].sum()) < segment // 2:
            continue
        offsets, dist = offset_distances(model.mouth(clip.mouth[a:b]), model.audio(clip.audio[a:b]),
                                         clip.valid[a:b], model.config.max_offset)
        finite = torch.isfinite(dist)
        k = int(offsets[int(torch.argmin(torch.where(finite, dist, torch.inf)))])
        hits.append(abs(k) <= 1)
        confs.append(float(dist[finite].median() - dist[finite].min()))
        near, far = dist[m - 1:m + 2], torch.cat([dist[:m - 1], dist[m + 2:]])
        margins.append(float(far[torch.isfinite(far)].min() - near[torch.isfinite(near)].min()))
    model.train(was_training)
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {"offset_accuracy": mean(hits), "confidence": mean(confs), "lead": mean(margins), "segments": len(hits)}


def train_sync_expert(model: SyncExpert, clips: list[SyncClip], t: SyncExpertTraining,
                      progress=None) -> dict:
    """Train in place on the clips not held out; keep the weights best on the held-out ones."""
    train = [c for c in clips if not c.held_out]
    val = [c for c in clips if c.held_out]
    if not train or not val:
        raise ValueError("the sync expert needs training clips and held-out clips")
    gen = torch.Generator().manual_seed(t.seed)
    torch.manual_seed(t.seed)
    starts = [(i, a) for i, c in enumerate(train) for a in range(0, max(len(c.valid) - t.length, 0) + 1)
              if bool(c.valid[a:a + t.length].any())]
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    score = lambda m: m["lead"]  # noqa: E731
    first = evaluate(model, val, t.segment)
    stopper = EarlyStopping(model, score(first), t.patience, higher_is_better=True)
    history, start, step, losses = [{"step": 0, **first}], time.monotonic(), 0, []
    model.train()
    for step in range(1, t.steps + 1):
        mouth, audio, valid = [], [], []
        for k in torch.randint(len(starts), (t.stretches,), generator=gen).tolist():
            ci, a = starts[k]
            clip = train[ci]
            sl = slice(a, a + t.length)
            pad = t.length - len(clip.valid[sl])
            mouth.append(torch.nn.functional.pad(clip.mouth[sl], (0, 0, 0, 0, 0, pad)))
            audio.append(torch.nn.functional.pad(clip.audio[sl], (0, 0, 0, 0, 0, pad)))
            valid.append(torch.nn.functional.pad(clip.valid[sl], (0, pad)))
        mouth_in, audio_in, valid_in = torch.stack(mouth), torch.stack(audio), torch.stack(valid)
        gain = torch.exp(torch.empty(t.stretches, 1, 1, 1).uniform_(math.log(t.mouth_gain[0]),
                                                                    math.log(t.mouth_gain[1]), generator=gen))
        mouth_in = mouth_in * gain + t.mouth_noise * torch.randn(mouth_in.shape, generator=gen)
        audio_in = audio_in + t.audio_noise * torch.randn(audio_in.shape, generator=gen)
        b, n = mouth_in.shape[:2]
        m_emb = model.mouth(mouth_in.flatten(0, 1)).reshape(b, n, -1)
        a_emb = model.audio(audio_in.flatten(0, 1)).reshape(b, n, -1)
        loss = contrastive_loss(m_emb, a_emb, valid_in, model.config.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        out_of_time = t.time_budget_s is not None and time.monotonic() - start > t.time_budget_s
        if step % t.eval_every == 0 or out_of_time or step == t.steps:
            m = evaluate(model, val, t.segment)
            history.append({"step": step, "loss": float(np.mean(losses[-t.eval_every:])), **m})
            log.info("sync expert step %d loss %.3f held-out offset accuracy %.3f confidence %.3f", step,
                     history[-1]["loss"], m["offset_accuracy"], m["confidence"])
            if progress:
                progress(step, history[-1])
            if stopper.update(score(m)) or out_of_time:
                break
    stopper.restore()
    best = max(history, key=lambda h: score(h))
    return {"steps": step, "seconds": round(time.monotonic() - start, 1), "best": best, "history": history,
            "train_clips": len(train), "held_out_clips": len(val)}


__all__ = ["SyncClip", "SyncExpertTraining", "evaluate", "train_sync_expert"]
