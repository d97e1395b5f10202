"""Training the Style-SyncFormer: audio features -> displacements, with held-out frames and early stop.

We are data-limited, not compute-limited (seconds to minutes of footage per speaker): every clip's
last ``val_fraction`` of frames is held out, training stops when the validation vertex error has
not improved for ``patience`` evaluations, and the best weights (not the last) are kept. Speakers
are pooled in the base model; a speaker model starts from the base and sees only its own clips.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from models.early_stopping import EarlyStopping
from models.syncformer import StyleSyncFormer, velocity_loss, vertex_loss


@dataclass
class Sequence:
    """One clip: audio features at the video frame rate and the tracked displacements."""
    audio: torch.Tensor   # (T, audio_dim)
    disp: torch.Tensor    # (T, V, 3)


@dataclass
class SyncFormerTraining:
    steps: int = 2000
    time_budget_s: float | None = None
    batch: int = 8
    window: int = 64              # frames per training window
    lr: float = 3e-4
    weight_decay: float = 1e-2
    val_fraction: float = 0.15
    eval_every: int = 50
    patience: int = 8             # evaluations without improvement before stopping
    log_every: int = 10           # training losses are logged every this many steps
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    seed: int = 0
    log: list[dict] = field(default_factory=list)


def split(seqs: list[Sequence], val_fraction: float) -> tuple[list[Sequence], list[Sequence]]:
    """Hold out the end of every clip (contiguous, so neighbouring frames do not leak)."""
    train, val = [], []
    for s in seqs:
        cut = int(round(len(s.audio) * (1 - val_fraction)))
        train.append(Sequence(s.audio[:cut], s.disp[:cut]))
        if len(s.audio) - cut >= 8:
            val.append(Sequence(s.audio[cut:], s.disp[cut:]))
    return train, val


def normalization(seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.cat([s.disp.reshape(len(s.disp), -1) for s in seqs])
    return d.mean(0), d.std(0)


def _window(seq: Sequence, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if len(seq.audio) <= length:
        return seq.audio, seq.disp
    start = int(torch.randint(0, len(seq.audio) - length + 1, (1,), generator=gen))
    return seq.audio[start:start + length], seq.disp[start:start + length]


def _batch(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = max(len(a) for a, _ in items)
    audio = torch.zeros(len(items), t, items[0][0].shape[-1])
    disp = torch.zeros(len(items), t, *items[0][1].shape[1:])
    mask = torch.zeros(len(items), t)
    for i, (a, d) in enumerate(items):
        audio[i, :len(a)], disp[i, :len(d)], mask[i, :len(a)] = a, d, 1
    return audio, disp, mask


def evaluate(model: StyleSyncFormer, seqs: list[Sequence], lips: torch.Tensor, style_ref: torch.Tensor | None = None) -> float:
    """Mean lip-weighted vertex error over whole held-out sequences."""
    model.eval()
    total, n = 0.0, 0
    dev = next(model.parameters()).device
    with torch.no_grad():
        for s in seqs:
            ref = (style_ref if style_ref is not None else s.disp)[None].to(dev)
            pred = model(s.audio[None].to(dev), model.style(ref[:, :model.cfg.style_window]))
            total += float(vertex_loss(pred, s.disp[None].to(dev), lips.to(dev), model.cfg.lip_weight)) * len(s.audio)
            n += len(s.audio)
    model.train()
    return total / max(n, 1)


def train_syncformer(model: StyleSyncFormer, seqs: list[Sequence], lips: torch.Tensor, cfg: SyncFormerTraining,
                     set_normalization: bool = True) -> dict:
    """Train in place; keeps the best validation weights. Returns a summary with the metric history."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train, val = split(seqs, cfg.val_fraction)
    if set_normalization:
        model.set_normalization(*normalization(train))
    dev = cfg.device
    model.to(dev)
    lips = lips.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    start = time.monotonic()
    first_val = evaluate(model, val or train, lips)
    stopper, step = EarlyStopping(model, first_val, cfg.patience, higher_is_better=False), 0
    model.train()
    for step in range(1, cfg.steps + 1):
        picks = torch.randint(0, len(train), (cfg.batch,), generator=gen).tolist()
        audio, disp, mask = _batch([_window(train[i], cfg.window, gen) for i in picks])
        # the style comes from another window of the same clip: the model must read style, not copy
        refs = torch.stack([_window(train[i], model.cfg.style_window, gen)[1][:model.cfg.style_window] for i in picks]) \
            if all(len(train[i].disp) >= model.cfg.style_window for i in picks) else disp
        audio, disp, mask, refs = audio.to(dev), disp.to(dev), mask.to(dev), refs.to(dev)
        pred = model(audio, model.style(refs), mask == 0)
        loss = vertex_loss(pred, disp, lips, model.cfg.lip_weight, mask) + model.cfg.velocity_weight * velocity_loss(pred, disp, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0:
            cfg.log.append({"step": step, "loss": float(loss.detach()), "seconds": time.monotonic() - start})
        if step % cfg.eval_every == 0 or step == cfg.steps:
            v = evaluate(model, val or train, lips)
            cfg.log.append({"step": step, "loss": float(loss.detach()), "val_vertex": v, "seconds": time.monotonic() - start})
            if stopper.update(v):
                break
        if cfg.time_budget_s is not None and time.monotonic() - start > cfg.time_budget_s:
            break
    best = stopper.restore()
    model.eval()
    return {"steps": step, "seconds": time.monotonic() - start, "val_vertex_start": first_val, "val_vertex_best": best,
            "log": cfg.log}
