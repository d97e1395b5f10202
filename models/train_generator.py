"""Training the rewired generator by self-reconstruction (DESIGN section 2.3).

Target frame t, mesh of frame t, the target with its lower face masked, and a reference crop from
another frame of the same video: the generator must redraw the mouth the mesh asks for, with the
identity the reference shows. Frames at the end of every clip are held out; lower-face PSNR on them
is the validation metric, and the best weights are kept.

Face swapping rewires the same inputs (DESIGN section 2): the whole face is masked and filled with
the reference frame's face texture moved onto the target's mesh, so the face can only come from
the reference. A share of every batch (``swap_share``) is trained that way, with the reference
from another frame of the same speaker (other pose, other expression); at inference the
reference is another person's. Masking alone is not enough: trained so, the generator drew a
blurred average face (dlib distance to the reference 0.77, to the source 0.78).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from models.discriminator import Discriminator
from models.early_stopping import EarlyStopping
from models.generator import Generator, masked_target
from models.losses import (discriminator_adversarial, feature_matching, generator_adversarial, ms_ssim_loss,
                           r1_penalty, weighted_l1)
from models.precision import autocast
from models.renderer import warp_texture


@dataclass
class GeneratorData:
    """All training frames, stacked: images in [-1, 1], meshes and mouth masks in [0, 1]."""
    crops: torch.Tensor    # (N, 3, S, S)
    meshes: torch.Tensor   # (N, 1, S, S)
    masks: torch.Tensor    # (N, 1, S, S) soft lower-face mask
    clip: torch.Tensor     # (N,) clip index of each frame (references come from the same clip)
    time: torch.Tensor     # (N,) position of the frame within its clip, 0..1
    face_masks: torch.Tensor | None = None  # (N, 1, S, S) soft whole-face mask (face-swap training)
    verts: torch.Tensor | None = None       # (N, V, 3) tracked mesh in crop pixels (face-swap textures)
    held_out: torch.Tensor | None = None    # (N,) bool: frames of held-out speakers (validation only)

    def __len__(self) -> int:
        return len(self.crops)


@dataclass
class GeneratorTraining:
    steps: int = 3000
    time_budget_s: float | None = None
    batch: int = 8
    lr: float = 2e-3
    d_lr: float = 2e-3
    mouth_weight: float = 5.0
    ssim_weight: float = 0.5
    adv_weight: float = 0.05
    fm_weight: float = 1.0
    adv_start: int = 500          # steps of reconstruction only before the discriminator joins
    r1_every: int = 4
    val_fraction: float = 0.15
    eval_every: int = 100
    max_eval_frames: int = 160    # a fixed, evenly spread subset of the held-out frames: evaluation stays cheap
    patience: int = 10
    amp: bool = True              # bfloat16 autocast on CPUs that have it (2.2x measured on this CPU kind), AMP on CUDA
    perceptual_weight: float = 1.0  # used only when a perceptual module (local VGG weights) is given
    log_every: int = 10           # training losses are logged every this many steps
    swap_share: float = 0.0       # share of samples trained as face swaps (whole face masked); needs face_masks
    # Share of lip-sync samples whose mask also covers another frame's lower face (``widened_masks``),
    # as a dub's does; then held-out frames are scored, and selected, under such masks too. 0: off.
    jaw_share: float = 0.0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    seed: int = 0
    log: list[dict] = field(default_factory=list)


def swap_texture(data: GeneratorData, target: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference frames' faces moved onto the target frames' meshes (texture, coverage)."""
    return warp_texture(data.crops[ref], data.verts[ref], data.verts[target], data.crops.shape[-1])


def lower_face_psnr(fake: torch.Tensor, real: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) inside the lower-face mask, per image; images in [-1, 1]."""
    w = (masks > 0.5).float()
    mse = (((fake - real) / 2) ** 2 * w).sum([1, 2, 3]) / (w.sum([1, 2, 3]) * fake.shape[1]).clamp_min(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def references(data: GeneratorData, idx: torch.Tensor, gen: torch.Generator, pool: torch.Tensor) -> torch.Tensor:
    """For each target, a random frame of the same clip from ``pool`` (the training frames)."""
    out = torch.empty_like(idx)
    for k, i in enumerate(idx.tolist()):
        same = pool[data.clip[pool] == data.clip[i]]
        out[k] = same[torch.randint(0, len(same), (1,), generator=gen)]
    return out


def widened_masks(data: GeneratorData, masks: torch.Tensor, other: torch.Tensor,
                  pick: torch.Tensor | None = None) -> torch.Tensor:
    """Lower-face masks joined with those of frames ``other`` (same clips) where
    ``pick`` (all when None). A dub redraws the union of the tracked and the planned lower face: where
    the planned jaw closes above an open one, the generator must paint what the open jaw covered (neck,
    beard, collar). Trained only on each frame's own mask, it never had to, and painted a flat
    blue-green band there."""
    joined = torch.maximum(masks, data.masks[other].to(masks.device))
    return joined if pick is None else torch.where(pick.to(masks.device)[:, None, None, None], joined, masks)


def by_speaker(data: GeneratorData) -> bool:
    """Whether validation is whole held-out speakers rather than the end of every clip."""
    return data.held_out is not None and bool(data.held_out.any())


def split(data: GeneratorData, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out frame indices: the held-out speakers' frames when there are any,
    otherwise the end of every clip."""
    val = data.held_out if by_speaker(data) else data.time >= 1 - val_fraction
    return torch.nonzero(~val).flatten(), torch.nonzero(val).flatten()


def evaluate(g: Generator, data: GeneratorData, idx: torch.Tensor, ref_idx: torch.Tensor, batch: int = 16,
             swap: bool = False, widen: bool = False) -> float:
    """Mean PSNR (dB) inside the redrawn region of held-out frames: the lower face, or with ``swap``
    the whole face (drawn from the reference alone); with ``widen`` the lower face joined with the
    reference frame's, as a dub from that frame's motion would mask it (``widened_masks``)."""
    g.eval()
    scores = []
    dev = next(g.parameters()).device
    masks = data.face_masks if swap else data.masks
    with torch.no_grad():
        for lo in range(0, len(idx), batch):
            i, r = idx[lo:lo + batch], ref_idx[lo:lo + batch]
            real, mesh, mask = data.crops[i].to(dev), data.meshes[i].to(dev), masks[i].to(dev)
            if widen:
                mask = widened_masks(data, mask, r)
            texture, cover = swap_texture(data, i, r) if swap else (None, None)
            fake = g(mesh, masked_target(real, mask, texture, cover), data.crops[r].to(dev))
            scores.append(lower_face_psnr(fake.float(), real, mask).cpu())
    g.train()
    return float(torch.cat(scores).mean())


def swap_flags(n: int, share: float, gen: torch.Generator) -> torch.Tensor:
    """(n,) bool: which samples of a batch train face swapping (at least one when share > 0)."""
    flags = torch.rand(n, generator=gen) < share
    if share > 0 and not flags.any():
        flags[torch.randint(0, n, (1,), generator=gen)] = True
    return flags


def evaluation_frames(data: GeneratorData, cfg: GeneratorTraining,
                      gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(training frames, held-out frames, their references): at most ``cfg.max_eval_frames`` evenly
    spread held-out frames, each with a fixed reference, so that evaluations are cheap and comparable."""
    train_idx, val_idx = split(data, cfg.val_fraction)
    if len(val_idx) == 0:
        val_idx = train_idx
    # a held-out speaker has no training frames: its references are its own other frames, as at inference
    ref_pool = val_idx if by_speaker(data) else train_idx
    if len(val_idx) > cfg.max_eval_frames:
        val_idx = val_idx[torch.linspace(0, len(val_idx) - 1, cfg.max_eval_frames).round().long()]
    return train_idx, val_idx, references(data, val_idx, gen, ref_pool)


@dataclass
class MaskedTarget:
    """A batch's generator input: the target with its redrawn region blanked (and, for face swaps,
    filled with the reference's texture), and the mask of that region."""
    image: torch.Tensor
    mask: torch.Tensor


def sample_batch(data: GeneratorData, train_idx: torch.Tensor, cfg: GeneratorTraining, gen: torch.Generator,
                 swapping: bool, dev: str) -> tuple[torch.Tensor, torch.Tensor, MaskedTarget, torch.Tensor]:
    """One training batch as the generator recipe draws it: (real, mesh, masked target, reference
    crops). Lip-sync samples mask the lower face (widened for a share, ``cfg.jaw_share``); a share
    (``cfg.swap_share``, when ``swapping``) masks the whole face and fills it from the reference."""
    i = train_idx[torch.randint(0, len(train_idx), (cfg.batch,), generator=gen)]
    r = references(data, i, gen, train_idx)
    real, mesh, mask = data.crops[i].to(dev), data.meshes[i].to(dev), data.masks[i].to(dev)
    if cfg.jaw_share > 0:
        mask = widened_masks(data, mask, references(data, i, gen, train_idx),
                             torch.rand(len(i), generator=gen) < cfg.jaw_share)
    texture = cover = None
    if swapping:
        swap = swap_flags(len(i), cfg.swap_share, gen).to(dev)[:, None, None, None]
        mask = torch.where(swap, data.face_masks[i].to(dev), mask)
        texture, cover = swap_texture(data, i, r)
        texture, cover = texture.to(dev), cover.to(dev) * swap
    return real, mesh, MaskedTarget(masked_target(real, mask, texture, cover), mask), data.crops[r].to(dev)


def discriminator_step(d: Discriminator, d_opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                       step: int, r1_every: int) -> float:
    """One step of D on a batch of real and drawn crops, with the lazy R1 penalty every ``r1_every``."""
    real_in = real.detach().requires_grad_(step % r1_every == 0)
    real_logit = d(real_in)
    d_loss = discriminator_adversarial(real_logit, d(fake.detach()))
    if step % r1_every == 0:
        d_loss = d_loss + d.cfg_r1_gamma / 2 * r1_penalty(real_logit, real_in) * r1_every
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()
    return float(d_loss.detach())


def can_swap(data: GeneratorData, cfg: GeneratorTraining) -> bool:
    """Whether the recipe trains face swaps and the data carries what they need."""
    return cfg.swap_share > 0 and data.face_masks is not None and data.verts is not None


def train_generator(g: Generator, d: Discriminator, data: GeneratorData, cfg: GeneratorTraining,
                    perceptual: torch.nn.Module | None = None) -> dict:
    """Train in place; keeps the best held-out weights. Returns a summary with the metric history.

    ``perceptual`` (a VGG feature distance built from local weights) joins the losses when given."""
    dev = cfg.device
    g.to(dev)
    d.to(dev)
    if perceptual is not None:
        perceptual.to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_idx, val_idx, val_ref = evaluation_frames(data, cfg, gen)
    swapping = can_swap(data, cfg)
    g_opt = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(d.parameters(), lr=cfg.d_lr, betas=(0.0, 0.99))
    start = time.monotonic()
    widening = cfg.jaw_share > 0
    first = evaluate(g, data, val_idx, val_ref, widen=widening)
    first_own = evaluate(g, data, val_idx, val_ref) if widening else first
    first_face = evaluate(g, data, val_idx, val_ref, swap=True) if swapping else None
    stopper, step = EarlyStopping(g, first, cfg.patience, higher_is_better=True), 0
    for step in range(1, cfg.steps + 1):
        real, mesh, masked, ref = sample_batch(data, train_idx, cfg, gen, swapping, dev)
        mask = masked.mask
        adversarial = step > cfg.adv_start
        with autocast(torch.device(dev), cfg.amp):
            fake = g(mesh, masked.image, ref).float()
        loss = weighted_l1(fake, real, mask, cfg.mouth_weight) + cfg.ssim_weight * ms_ssim_loss(fake, real)
        if perceptual is not None:
            loss = loss + cfg.perceptual_weight * perceptual(fake, real)
        d.requires_grad_(False)  # the generator's step needs no gradients of D's weights
        if adversarial:
            fake_logit, fake_feats = d(fake, return_features=True)
            with torch.no_grad():
                _, real_feats = d(real, return_features=True)
            loss = loss + cfg.adv_weight * generator_adversarial(fake_logit) + cfg.fm_weight * feature_matching(fake_feats, real_feats)
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        d.requires_grad_(True)
        if step % cfg.log_every == 0:
            cfg.log.append({"step": step, "loss": float(loss.detach()), "seconds": time.monotonic() - start})
        if adversarial:
            discriminator_step(d, d_opt, real, fake, step, cfg.r1_every)
        out_of_time = cfg.time_budget_s is not None and time.monotonic() - start > cfg.time_budget_s
        # the last step before the budget runs out is evaluated too (see train_syncformer)
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            v = evaluate(g, data, val_idx, val_ref, widen=widening)
            entry = {"step": step, "loss": float(loss.detach()), "val_lower_psnr": v, "seconds": time.monotonic() - start}
            if swapping:
                entry["val_face_psnr"] = evaluate(g, data, val_idx, val_ref, swap=True)
            cfg.log.append(entry)
            if stopper.update(v):
                break
        if out_of_time:
            break
    best = stopper.restore()
    g.eval()
    summary = {"steps": step, "seconds": time.monotonic() - start, "val_lower_psnr_start": first,
               "val_lower_psnr_best": best, "log": cfg.log}
    if widening:   # the numbers above are under widened masks; these under each frame's own, as without
        summary.update(val_widened_masks=True, val_own_mask_psnr_start=first_own,
                       val_own_mask_psnr_best=evaluate(g, data, val_idx, val_ref))
    if swapping:
        summary.update(val_face_psnr_start=first_face, val_face_psnr_best=evaluate(g, data, val_idx, val_ref, swap=True))
    return summary


def discriminator_accuracy(g: Generator, d: Discriminator, data: GeneratorData, idx: torch.Tensor,
                           ref_idx: torch.Tensor, batch: int = 16) -> float:
    """Share of held-out real crops D scores above zero and of the generator's redrawings of them
    (lower face masked, reference from ``ref_idx``) it scores below: how well D tells them apart."""
    d.eval()
    dev = next(g.parameters()).device
    right, seen = 0, 0
    with torch.no_grad():
        for lo in range(0, len(idx), batch):
            i, r = idx[lo:lo + batch], ref_idx[lo:lo + batch]
            real, mesh, mask = data.crops[i].to(dev), data.meshes[i].to(dev), data.masks[i].to(dev)
            fake = g(mesh, masked_target(real, mask), data.crops[r].to(dev)).float()
            right += int((d(real) > 0).sum()) + int((d(fake) < 0).sum())
            seen += 2 * len(i)
    d.train()
    return right / max(seen, 1)


def train_discriminator(g: Generator, d: Discriminator, data: GeneratorData, cfg: GeneratorTraining) -> dict:
    """Train D alone against a frozen generator, on batches drawn as the generator recipe draws them.

    Why: a fine-tune is a few hundred generator steps; a D that starts from random weights has
    learnt nothing by the time they are spent, so the reconstruction losses alone pull the drawing to
    the speaker's mean (soft) mouth. A D that already knows the base's drawings from real frames
    can push back from the first step. Keeps the last weights; reports held-out accuracy."""
    dev = cfg.device
    g.to(dev).eval().requires_grad_(False)
    d.to(dev).train()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_idx, val_idx, val_ref = evaluation_frames(data, cfg, gen)
    swapping = can_swap(data, cfg)
    d_opt = torch.optim.Adam(d.parameters(), lr=cfg.d_lr, betas=(0.0, 0.99))
    start = time.monotonic()
    first = discriminator_accuracy(g, d, data, val_idx, val_ref)
    log, step, d_loss = [], 0, float("nan")
    for step in range(1, cfg.steps + 1):
        real, mesh, masked, ref = sample_batch(data, train_idx, cfg, gen, swapping, dev)
        with torch.no_grad(), autocast(torch.device(dev), cfg.amp):
            fake = g(mesh, masked.image, ref).float()
        d_loss = discriminator_step(d, d_opt, real, fake, step, cfg.r1_every)
        out_of_time = cfg.time_budget_s is not None and time.monotonic() - start > cfg.time_budget_s
        if step % cfg.eval_every == 0 or out_of_time:
            log.append({"step": step, "d_loss": d_loss, "val_accuracy": discriminator_accuracy(g, d, data, val_idx, val_ref),
                        "seconds": time.monotonic() - start})
        if out_of_time:
            break
    g.requires_grad_(True)
    return {"steps": step, "seconds": time.monotonic() - start, "val_accuracy_start": first,
            "val_accuracy_end": discriminator_accuracy(g, d, data, val_idx, val_ref), "d_loss_end": d_loss, "log": log}


__all__ = ["GeneratorData", "GeneratorTraining", "train_generator", "train_discriminator", "lower_face_psnr", "swap_flags", "swap_texture"]
