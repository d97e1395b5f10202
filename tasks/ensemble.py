"""A base whose Style-SyncFormer averages several trained apart (``models.syncformer.SyncFormerEnsemble``).

Each member is trained by the base recipe itself (``resync model train-base --resume BASE
--fresh-syncformer --generator-seconds 0 --seed N``): the same footage, the same held-out speakers
(``TrainingPlan.split_seed``), another seed. This module puts them together with the base's
generator, measures every member and their average on those held-out speakers, and writes the
checkpoint at ``weights_dtype`` (float16 keeps three members and the generator under 20 MB).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from catalogs.settings import Settings
from catalogs.storage import Storage
from models.audio_features import AudioFeatures, FeatureCache
from models.resyncer import ModelCard, ReSyncer
from models.syncformer import StyleSyncFormer, SyncFormerEnsemble
from models.train_syncformer import evaluate, split
from tasks.train import BASE_HOLDOUT, MOUTH, TrainingPlan, _lips, hold_out_speakers, prepare_labelled_clips, sequences

log = logging.getLogger(__name__)


def single_syncformers(model: ReSyncer) -> list[StyleSyncFormer]:
    """The model's Style-SyncFormers, one or an ensemble's members."""
    sf = model.syncformer
    return list(sf.members) if isinstance(sf, SyncFormerEnsemble) else [sf]


def ensemble_model(base: ReSyncer, members: list[ReSyncer], weights_dtype: str = "float16") -> ReSyncer:
    """``base``'s generator with the Style-SyncFormers of ``base`` and ``members`` averaged.

    Members must read the same audio features through the same Style-SyncFormer shape as the base:
    averaging networks that read different inputs would average nonsense."""
    shape = replace(base.config.syncformer, members=1)
    for m in members:
        if m.card.audio_features != base.card.audio_features:
            raise ValueError(f"member {m.version} reads audio features {m.card.audio_features!r}, "
                             f"the base {base.version} {base.card.audio_features!r}")
        if replace(m.config.syncformer, members=1) != shape:
            raise ValueError(f"member {m.version}'s Style-SyncFormer is configured unlike the base {base.version}'s")
    singles = [sf for m in (base, *members) for sf in single_syncformers(m)]
    config = replace(base.config, syncformer=replace(shape, members=len(singles)), weights_dtype=weights_dtype)
    card = ModelCard(kind="base", parent=base.version, audio_features=base.card.audio_features,
                     training_data=list(base.card.training_data),
                     metrics={"syncformer_members": [m.version for m in (base, *members)]})
    model = ReSyncer(config, card)
    model.generator.load_state_dict(base.generator.state_dict())
    if base.readout is not None:
        model.readout = MotionReadout.from_state(base.readout.state_dict())
    for dst, src in zip(single_syncformers(model), singles):
        dst.load_state_dict(src.state_dict())
    return model.eval()


def held_out_scores(storage: Storage, settings: Settings, model: ReSyncer, uris: list[str], speakers: list[str],
                    features: AudioFeatures, cache: FeatureCache | None, say: Callable[[str], None] = log.info) -> dict:
    """Mouth-opening concordance / correlation and vertex error of every member and of their average
    on the speakers the base recipe holds out (the same people every member was selected on)."""
    clips = prepare_labelled_clips(storage, settings, uris, speakers, model, features, cache, say=say)
    recipe = TrainingPlan()
    held = hold_out_speakers(clips, recipe.val_speaker_share, recipe.split_seed)
    _, val = split(sequences(clips), BASE_HOLDOUT)
    parts = single_syncformers(model)
    rows = {f"member {k}": evaluate(m, val, _lips(), mouth=MOUTH) for k, m in enumerate(parts)}
    if len(parts) > 1:
        rows["average"] = evaluate(model.syncformer, val, _lips(), mouth=MOUTH)
    return {"held_out_speakers": held,
            "scores": {k: {"opening_ccc": e.opening_ccc, "opening_corr": e.opening_corr, "vertex": e.vertex}
                       for k, e in rows.items()}}


def ensemble_base(storage: Storage, settings: Settings, base: ReSyncer, members: list[ReSyncer], out_dir: str | Path,
                  features: AudioFeatures, cache: FeatureCache | None = None, uris: list[str] | None = None,
                  speakers: list[str] | None = None, weights_dtype: str = "float16",
                  say: Callable[[str], None] = log.info) -> tuple[ReSyncer, dict]:
    """Assemble, measure on the held-out speakers of ``uris`` (when given) and save. Returns the model
    and its summary (also in the card's metrics)."""
    start = time.monotonic()
    model = ensemble_model(base, members, weights_dtype)
    summary: dict = {"members": model.card.metrics["syncformer_members"]}
    if uris:
        if speakers is None or len(speakers) != len(uris):
            raise ValueError("held-out scores need one speaker label per video (a --listing)")
        summary |= held_out_scores(storage, settings, model, uris, speakers, features, cache, say)
    summary["wall_s"] = time.monotonic() - start
    model.card.metrics = summary
    model.save(out_dir, include_discriminator=False)
    return model, summary


def ensemble_card(model: ReSyncer, summary: dict, command: str) -> str:
    """The assembled model's card: its members and how each, and their average, does held out."""
    rows = "".join(f"| {name} | {s['opening_ccc']:.3f} | {s['opening_corr']:.3f} | {s['vertex']:.4g} |\n"
                   for name, s in summary.get("scores", {}).items())
    held = ", ".join(summary.get("held_out_speakers", []))
    scores = (f"""## Held-out speakers ({held})

| Style-SyncFormer | mouth-opening concordance | mouth-opening correlation | lip-weighted vertex error |
|---|---|---|---|
{rows}""" if rows else "Not scored on held-out speakers (assembled without a `--listing`).\n")
    return f"""# ReSyncer base model `{model.version}` ({model.config.name} configuration, {model.config.syncformer.members} Style-SyncFormers averaged)

- Generator of `{model.card.parent}`; Style-SyncFormers of {", ".join(f"`{v}`" for v in summary["members"])}
  (each trained by the base recipe with its own seed, selected on the same held-out speakers).
- Audio features `{model.card.audio_features}`; weights stored as {model.config.weights_dtype}.
- Assembled with: `{command}`

{scores}"""


__all__ = ["ensemble_base", "ensemble_card", "ensemble_model", "held_out_scores", "single_syncformers"]
