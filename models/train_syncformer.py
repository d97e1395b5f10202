"""Training the Style-SyncFormer: audio features -> displacements, with held-out frames and early stop.

We are data-limited, not compute-limited (seconds to minutes of footage per speaker): every clip's
last ``val_fraction`` of frames is held out, training stops when the held-out score has not
improved for ``patience`` evaluations, and the best weights (not the last) are kept. Speakers are
pooled in the base model; a speaker model starts from the base and sees only its own clips.

The held-out score is what lip sync is judged by: how well the predicted mouth opening follows the
tracked one (given the inner-lip vertices and the sequences' templates), as Lin's concordance
correlation, which also asks for the right amplitude (the style's part). The vertex error is still
logged, but it selects badly: it bottoms out while the model still predicts an average face (on
the pooled shared clips at step 100, with a mouth-opening correlation of 0.52 averaged over clips,
against 0.63 at step 300 where the vertex error had risen 6%), because most vertices move for
reasons the audio does not carry (blinks, brows, tracking noise).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from models.early_stopping import EarlyStopping
from models.syncformer import StyleSyncFormer, opening_loss, velocity_loss, vertex_loss


@dataclass
class Sequence:
    """One clip: audio features at the video frame rate and the tracked displacements."""
    audio: torch.Tensor   # (T, token_dim) audio tokens (models.audio_features.frame_tokens)
    disp: torch.Tensor    # (T, V, 3)
    template: torch.Tensor | None = None  # (T, V, 3) the shot template of every frame: disp + template = mesh
    held_out: bool = False  # a held-out speaker's: validation only (then no clip is cut in time)
    sync_audio: torch.Tensor | None = None  # (T, D) the sync expert's embedding of each frame's audio (its loss)
    voices: torch.Tensor | None = None  # (K, T, token_dim) the audio tokens of K voice-perturbed copies of the track

    def part(self, start: int, stop: int) -> "Sequence":
        """Frames ``start:stop`` of every per-frame field."""
        cut = lambda x: None if x is None else x[start:stop]   # noqa: E731
        return Sequence(self.audio[start:stop], self.disp[start:stop], cut(self.template), self.held_out,
                        cut(self.sync_audio), None if self.voices is None else self.voices[:, start:stop])

    def in_voice(self, k: int) -> "Sequence":
        """The same frames heard in voice ``k`` of ``voices``."""
        if self.voices is None:
            raise ValueError("this sequence carries no other voices")
        return Sequence(self.voices[k], self.disp, self.template, self.held_out, self.sync_audio, None)


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
    # Every training window's motion and its style reference are scaled by one random factor from
    # this range (log-uniform): the audio says nothing of that amplitude, only the reference does, so
    # the style code has to carry it. Without it the audio window names the speaker well enough
    # that the style code was ignored (one audio spoken in a lively and a calm speaker's style gave
    # mouth-opening amplitudes 1.03x apart, for speakers whose own differ 1.66x; with it 1.64-1.76x
    # over two seeds). None: no scaling.
    style_scale: tuple[float, float] | None = (0.5, 2.0)
    # Weight of the mouth-opening concordance loss (``opening_loss``; needs ``mouth``), against the
    # L2 losses' regression to the mean. 0: L2 losses only.
    opening_weight: float = 0.0
    # Weight of the frozen sync expert's loss (``models.sync_expert.ExpertSyncLoss``; needs the
    # sequences' ``sync_audio`` and templates). 0: off.
    sync_weight: float = 0.0
    # Share of training windows heard in one of their sequence's perturbed voices (``Sequence.voices``,
    # made from speed-perturbed copies of the track), so that the motion cannot be keyed on the voices
    # of the few dozen people trained on. 0: the real voices only. Validation always hears the real one.
    voice_share: float = 0.0
    log: list[dict] = field(default_factory=list)


def split(seqs: list[Sequence], val_fraction: float) -> tuple[list[Sequence], list[Sequence]]:
    """Held-out speakers' sequences when there are any (a base is selected on people it never saw, as
    it is used); otherwise the end of every clip (contiguous, so neighbouring frames do not leak)."""
    if any(s.held_out for s in seqs):
        return [s for s in seqs if not s.held_out], [s for s in seqs if s.held_out]
    train, val = [], []
    for s in seqs:
        cut = int(round(len(s.audio) * (1 - val_fraction)))
        train.append(s.part(0, cut))
        if len(s.audio) - cut >= 8:
            val.append(s.part(cut, len(s.audio)))
    return train, val


def normalization(seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.cat([s.disp.reshape(len(s.disp), -1) for s in seqs])
    return d.mean(0), d.std(0)


def _window(seq: Sequence, length: int, gen: torch.Generator) -> Sequence:
    if len(seq.audio) <= length:
        return seq
    start = int(torch.randint(0, len(seq.audio) - length + 1, (1,), generator=gen))
    return seq.part(start, start + length)


def _voiced(seq: Sequence, share: float, gen: torch.Generator) -> Sequence:
    """``seq`` in a random one of its perturbed voices with probability ``share`` (else as it is)."""
    if seq.voices is None or share <= 0 or float(torch.rand(1, generator=gen)) >= share:
        return seq
    return seq.in_voice(int(torch.randint(0, len(seq.voices), (1,), generator=gen)))


@dataclass
class _Batch:
    audio: torch.Tensor                 # (B, T, token_dim)
    disp: torch.Tensor                  # (B, T, V, 3)
    mask: torch.Tensor                  # (B, T) 1 where a frame is real
    template: torch.Tensor | None       # (B, T, V, 3) when every window has one
    sync_audio: torch.Tensor | None     # (B, T, D) when every window has one


def _padded(parts: list[torch.Tensor], t: int) -> torch.Tensor:
    out = torch.zeros(len(parts), t, *parts[0].shape[1:])
    for i, x in enumerate(parts):
        out[i, :len(x)] = x
    return out


def _batch(items: list[Sequence]) -> _Batch:
    t = max(len(s.audio) for s in items)
    mask = torch.zeros(len(items), t)
    for i, s in enumerate(items):
        mask[i, :len(s.audio)] = 1
    def field_of(name: str) -> torch.Tensor | None:   # noqa: E306
        parts = [getattr(s, name) for s in items]
        return None if any(x is None for x in parts) else _padded(parts, t)
    return _Batch(_padded([s.audio for s in items], t), _padded([s.disp for s in items], t), mask,
                  field_of("template"), field_of("sync_audio"))


def mouth_gap(mesh: torch.Tensor, mouth: tuple[int, int]) -> torch.Tensor:
    """(..., V, 3) meshes -> (...) distance in the image plane between the inner-lip vertices ``mouth``
    (upper, lower): the mouth opening up to the (constant) eye distance, enough for a correlation."""
    return (mesh[..., mouth[0], :2] - mesh[..., mouth[1], :2]).norm(dim=-1)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 1e-12 else float("nan")


def _ccc(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Lin's concordance correlation: 1 only when pred follows true with the same mean and amplitude."""
    cov = ((pred - pred.mean()) * (true - true.mean())).mean()
    den = float(pred.var(unbiased=False) + true.var(unbiased=False) + (pred.mean() - true.mean()) ** 2)
    return float(2 * cov) / den if den > 1e-12 else float("nan")


@dataclass
class Evaluation:
    vertex: float          # lip-weighted vertex error
    opening_corr: float    # mouth-opening correlation, frame-weighted mean over sequences (NaN: not measured)
    opening_ccc: float     # the same for the concordance correlation (amplitude must match too)


def evaluate(model: StyleSyncFormer, seqs: list[Sequence], lips: torch.Tensor, style_ref: torch.Tensor | None = None,
             mouth: tuple[int, int] | None = None) -> Evaluation:
    """Lip-weighted vertex error and mouth-opening correlation over held-out sequences (without
    ``style_ref``, a long sequence lends its first ``style_window`` frames the style and is scored on the rest)."""
    model.eval()
    total, n, corr_sum, ccc_sum, corr_n = 0.0, 0, 0.0, 0.0, 0
    dev = next(model.parameters()).device
    w = model.cfg.style_window
    with torch.no_grad():
        for s in seqs:
            if style_ref is None and len(s.audio) >= 2 * w:
                # the style from the sequence's first frames, scored on the others: a style code
                # read from the very frames it is scored on tells it their amplitude
                ref, s = s.disp[None, :w].to(dev), s.part(w, len(s.audio))
            else:
                ref = (style_ref if style_ref is not None else s.disp)[None, :w].to(dev)
            pred = model(s.audio[None].to(dev), model.style(ref))
            total += float(vertex_loss(pred, s.disp[None].to(dev), lips.to(dev), model.cfg.lip_weight)) * len(s.audio)
            n += len(s.audio)
            if mouth is not None and s.template is not None:
                tmpl = s.template.to(dev)
                got, want = mouth_gap(tmpl + pred[0], mouth), mouth_gap(tmpl + s.disp.to(dev), mouth)
                r, c = _corr(got, want), _ccc(got, want)
                if r == r and c == c:  # a mouth that never moves has no correlation to learn from
                    corr_sum, ccc_sum, corr_n = corr_sum + r * len(s.audio), ccc_sum + c * len(s.audio), corr_n + len(s.audio)
    model.train()
    nan = float("nan")
    return Evaluation(total / max(n, 1), corr_sum / corr_n if corr_n else nan, ccc_sum / corr_n if corr_n else nan)


def train_syncformer(model: StyleSyncFormer, seqs: list[Sequence], lips: torch.Tensor, cfg: SyncFormerTraining,
                     set_normalization: bool = True, mouth: tuple[int, int] | None = None,
                     sync_loss: torch.nn.Module | None = None) -> dict:
    """Train in place; keeps the best held-out weights. Returns a summary with the metric history.

    With ``mouth`` (the upper and lower inner-lip vertices) and sequences that carry templates, the
    best weights are those with the highest held-out mouth-opening concordance correlation;
    otherwise those with the lowest vertex error. With ``sync_loss`` (an ``ExpertSyncLoss``) and
    ``cfg.sync_weight`` > 0, the frozen expert judges every predicted window against its audio."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train, val = split(seqs, cfg.val_fraction)
    if set_normalization:
        model.set_normalization(*normalization(train))
    dev = cfg.device
    model.to(dev)
    lips = lips.to(dev)
    held = val or train
    by_opening = mouth is not None and all(s.template is not None for s in held)

    def score(e: Evaluation) -> float:
        # NaN (a model that predicts a still mouth) ranks below any measured correlation
        return (e.opening_ccc if e.opening_ccc == e.opening_ccc else -1.0) if by_opening else e.vertex

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / max(cfg.steps, 1))))
    start = time.monotonic()
    first = best_eval = evaluate(model, held, lips, mouth=mouth)
    stopper, step = EarlyStopping(model, score(first), cfg.patience, higher_is_better=by_opening), 0
    model.train()
    for step in range(1, cfg.steps + 1):
        picks = torch.randint(0, len(train), (cfg.batch,), generator=gen).tolist()
        batch = _batch([_voiced(_window(train[i], cfg.window, gen), cfg.voice_share, gen) for i in picks])
        audio, disp, mask = batch.audio, batch.disp, batch.mask
        # the style comes from another window of the same clip: the model must read style, not copy
        refs = torch.stack([_window(train[i], model.cfg.style_window, gen).disp[:model.cfg.style_window] for i in picks]) \
            if all(len(train[i].disp) >= model.cfg.style_window for i in picks) else disp
        if cfg.style_scale is not None:
            lo, hi = math.log(cfg.style_scale[0]), math.log(cfg.style_scale[1])
            scale = torch.exp(lo + (hi - lo) * torch.rand(len(picks), generator=gen))[:, None, None, None]
            disp, refs = disp * scale, refs * scale
        audio, disp, mask, refs = audio.to(dev), disp.to(dev), mask.to(dev), refs.to(dev)
        pred = model(audio, model.style(refs), mask == 0)
        loss = vertex_loss(pred, disp, lips, model.cfg.lip_weight, mask) + model.cfg.velocity_weight * velocity_loss(pred, disp, mask)
        if cfg.opening_weight > 0 and mouth is not None:
            loss = loss + cfg.opening_weight * opening_loss(pred, disp, mouth, mask)
        if cfg.sync_weight > 0 and sync_loss is not None and batch.template is not None and batch.sync_audio is not None:
            loss = loss + cfg.sync_weight * sync_loss(batch.template.to(dev) + pred, batch.sync_audio.to(dev), mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0:
            cfg.log.append({"step": step, "loss": float(loss.detach()), "seconds": time.monotonic() - start})
        out_of_time = cfg.time_budget_s is not None and time.monotonic() - start > cfg.time_budget_s
        # the last step before the budget runs out is evaluated too: a short budget (a speaker's
        # fine-tune) may end before the first regular evaluation, and would keep nothing it learnt
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            e = evaluate(model, held, lips, mouth=mouth)
            cfg.log.append({"step": step, "loss": float(loss.detach()), "val_vertex": e.vertex,
                            "val_opening_corr": e.opening_corr, "val_opening_ccc": e.opening_ccc,
                            "seconds": time.monotonic() - start})
            if (score(e) > stopper.best) if by_opening else (score(e) < stopper.best):
                best_eval = e
            if stopper.update(score(e)):
                break
        if out_of_time:
            break
    stopper.restore()
    model.eval()
    recipe = {"sync_weight": cfg.sync_weight} if cfg.sync_weight > 0 and sync_loss is not None else {}
    return {**recipe, "steps": step, "seconds": time.monotonic() - start, "selected_by": "opening_ccc" if by_opening else "vertex",
            "val_vertex_start": first.vertex, "val_vertex_best": best_eval.vertex,
            "val_opening_corr_start": first.opening_corr, "val_opening_corr_best": best_eval.opening_corr,
            "val_opening_ccc_start": first.opening_ccc, "val_opening_ccc_best": best_eval.opening_ccc,
            "log": cfg.log}
