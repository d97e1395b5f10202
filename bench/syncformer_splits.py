"""A Style-SyncFormer setting measured on several speaker splits of train/, never on videos/.

The base is selected on one split of train/'s speakers (seven people held out). A lever judged on
that split alone can be a property of those seven: speed-perturbed voices raised the held-out
mouth-opening correlation there for five seeds out of five, raised it on one other split and
lowered it on another, and the base trained with them dubbed the unseen speakers worse (README,
training). This trains the recipe's fresh Style-SyncFormer (``tasks.train``: the same clip
preparation, speaker hold-out and ``train_syncformer`` as ``resync model train-base``) for every
split x seed x value of one ``SyncFormerTraining`` field, and reports the held-out correlation and
concordance of each value, per split and over all, with how many (split, seed) pairs it won.

    python -m bench.syncformer_splits --vary voice_share=0,0.5 --splits 0,1,2 --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bench.quality import RESULTS, SHARED, TRAIN_LISTING
from catalogs.listing import labelled_videos
from catalogs.settings import Settings
from catalogs.storage import Storage
from models.config import get_config
from models.resyncer import ReSyncer
from models.syncformer import StyleSyncFormer
from models.train_syncformer import SyncFormerTraining, train_syncformer
from tasks import model_store
from tasks.train import MOUTH, TrainingPlan, _lips, hold_out_speakers, prepare_labelled_clips, sequences

console = Console(width=160)


def parse_vary(text: str) -> tuple[str, list[float]]:
    """``field=v1,v2,...`` of ``SyncFormerTraining`` -> (field, values)."""
    name, _, values = text.partition("=")
    numeric = isinstance(getattr(SyncFormerTraining(), name, None), (int, float))
    if not numeric or not values:
        raise argparse.ArgumentTypeError(f"--vary wants FIELD=V1,V2 with a numeric SyncFormerTraining field, got {text!r}")
    return name, [float(v) for v in values.split(",")]


def run_one(clips: list, recipe: SyncFormerTraining, config: str, seed: int) -> dict:
    """One fresh Style-SyncFormer of ``recipe`` (the seed decides its first weights and its batches)."""
    torch.manual_seed(seed)
    model = StyleSyncFormer(get_config(config).syncformer)
    r = train_syncformer(model, sequences(clips), _lips(), replace(recipe, seed=seed, log=[]), mouth=MOUTH)
    return {"steps": r["steps"], "seconds": r["seconds"], "corr": r["val_opening_corr_best"],
            "ccc": r["val_opening_ccc_best"]}


def summarise(rows: list[dict], field: str, values: list[float], splits: list[int]) -> Table:
    t = Table(title=f"held-out mouth-opening correlation / concordance by {field} (train/ speaker splits)")
    t.add_column("split")
    for v in values:
        t.add_column(f"{field}={v:g}", justify="right")
    for label, keep in [(str(s), [s]) for s in splits] + [("all", splits)]:
        cells = []
        for v in values:
            got = [r for r in rows if r["value"] == v and r["split"] in keep]
            cells.append(f"{np.mean([r['corr'] for r in got]):.3f} / {np.mean([r['ccc'] for r in got]):.3f}"
                         if got else "-")
        t.add_row(label, *cells)
    corr = {(r["split"], r["seed"], r["value"]): r["corr"] for r in rows}
    first = values[0]
    for v in values[1:]:
        pairs = [(sp, sd) for sp, sd, val in corr if val == v and (sp, sd, first) in corr]
        wins = sum(corr[(sp, sd, v)] > corr[(sp, sd, first)] for sp, sd in pairs)
        t.caption = (t.caption or "") + f"{field}={v:g} beat {first:g} on {wins} of {len(pairs)} (split, seed) pairs. "
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vary", type=parse_vary, required=True,
                    help="a SyncFormerTraining field and the values to compare, e.g. voice_share=0,0.5 (the first is the reference)")
    ap.add_argument("--splits", default="0,1,2", help="speaker-split seeds (TrainingPlan.split_seed; 0 is the base's split)")
    ap.add_argument("--seeds", default="0,1", help="training seeds per split and value")
    ap.add_argument("--seconds", type=float, default=None, help="time budget per model (default: the recipe's)")
    ap.add_argument("--listing", default=str(TRAIN_LISTING), help="videos with speaker_id (default: train/'s)")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / ".work" / "bench-root"),
                    help="storage root for cached tracks and features")
    args = ap.parse_args()
    field, values = args.vary
    splits, seeds = [int(s) for s in args.splits.split(",")], [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(2)
    settings = Settings(root=args.root, allowed_roots=[str(SHARED), args.root, str(Path(args.listing).resolve().parent)])
    storage = Storage(settings)
    plan = TrainingPlan()
    if args.seconds is not None:
        plan.syncformer.time_budget_s = args.seconds
    voices = plan.voice_factors if field == "voice_share" and any(v > 0 for v in values) else ()
    uris, speakers = labelled_videos(storage, args.listing)
    features, cache = model_store.audio_features(settings), model_store.feature_cache(settings)
    shape = ReSyncer.new(plan.config)   # clips prepared as the recipe's configuration reads them
    started = time.perf_counter()
    clips = prepare_labelled_clips(storage, settings, uris, speakers, shape, features, cache,
                                   say=lambda _: None, voice_factors=voices)
    console.print(f"prepared {len(clips)} clips in {time.perf_counter() - started:.0f} s")
    rows: list[dict] = []
    for split in splits:
        held = hold_out_speakers(clips, plan.val_speaker_share, split)
        for seed in seeds:
            for v in values:
                recipe = replace(plan.syncformer, **{field: type(getattr(plan.syncformer, field))(v)})
                r = {"split": split, "held_out": held, "seed": seed, "value": v, **run_one(clips, recipe, plan.config, seed)}
                rows.append(r)
                console.print(f"split {split} seed {seed} {field}={v:g}: corr {r['corr']:.3f}, ccc {r['ccc']:.3f} "
                              f"({r['steps']} steps, {r['seconds']:.0f} s)")
    console.print(summarise(rows, field, values, splits))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"syncformer-splits-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"field": field, "values": values, "rows": rows,
                               "wall_s": time.perf_counter() - started}, indent=2, default=float))
    console.print(f"results: {out}")


if __name__ == "__main__":
    main()
