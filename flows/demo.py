"""``make demo``: build a small demo catalog, ingest it, plan the nightly run and dub every planned
item with the bundled base model, on embedded defaults.

Uses real clips from ../shared/data when that folder is there; otherwise makes its own media: a
still portrait shipped by scikit-image as a 5 s video, and speech from espeak-ng in two languages.
The dubbing here is the single-item path (``resync dub``) run item by item; the orchestrated
nightly flow (Prefect + Ray, manifest commits) is not built yet.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

from rich.console import Console

from catalogs.delta import DeltaTables
from catalogs.ingest import CatalogIngest
from catalogs.plan import make_shards, plan_items
from catalogs.registry import ModelRecord, ModelRegistry
from catalogs.settings import Settings
from catalogs.storage import Storage

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEMO_CLIPS = {"map": ("speaker_map_5s.mp4", "man"), "glasses": ("speaker_glasses_5s.mp4", "woman"),
              "address": ("address_man_10s.mp4", "man2")}
DEMO_AUDIO = {"fr": "french1.wav", "de": "german1.wav"}
ESPEAK_LINES = {"fr": ("fr", "Bonjour à tous, bienvenue dans notre émission."),
                "de": ("de", "Guten Tag und herzlich willkommen zu unserer Sendung.")}

console = Console()


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def synthesize_media(folder: Path) -> tuple[dict[str, tuple[Path, str]], dict[str, Path]]:
    """A still-portrait video and espeak-ng speech, for machines without ../shared/data."""
    from skimage import data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    png = folder / "astronaut.png"
    Image.fromarray(data.astronaut()).save(png)
    video = folder / "astronaut_still_5s.mp4"
    if not video.exists():
        _run("ffmpeg", "-y", "-v", "error", "-loop", "1", "-i", str(png), "-t", "5", "-r", "25",
             "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video))
    audio = {}
    for lang, (voice, text) in ESPEAK_LINES.items():
        wav = folder / f"speech_{lang}.wav"
        if not wav.exists():
            _run("espeak-ng", "-v", voice, "-w", str(wav), text)
        audio[lang] = wav
    return {"astronaut": (video, "astronaut")}, audio


def write_listings(folder: Path, videos: dict[str, tuple[Path, str]], audio: dict[str, Path]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    vfile, rfile = folder / "videos.csv", folder / "requests.csv"
    with open(vfile, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "uri", "speaker_id", "title"])
        for vid, (path, speaker) in videos.items():
            w.writerow([vid, str(path), speaker, path.name])
    with open(rfile, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "language", "audio_uri"])
        for vid in videos:
            for lang, path in audio.items():
                w.writerow([vid, lang, str(path)])
    return vfile, rfile


def main() -> None:
    settings = Settings()
    root = Path(settings.root).resolve()
    demo = root / "demo-inputs"
    if SHARED.is_dir():
        videos = {vid: (SHARED / "videos" / name, spk) for vid, (name, spk) in DEMO_CLIPS.items()}
        audio = {lang: SHARED / "audio" / name for lang, name in DEMO_AUDIO.items()}
        source = f"clips from {SHARED}"
    else:
        if not shutil.which("espeak-ng"):
            raise SystemExit("espeak-ng is missing: run `make demo`, which installs it")
        videos, audio = synthesize_media(demo / "media")
        source = "a still portrait (scikit-image) and espeak-ng speech"
    settings = Settings(allowed_roots=[*settings.allowed_roots, str(SHARED), str(demo)])
    vfile, rfile = write_listings(demo, videos, audio)
    console.print(f"[bold]demo catalog[/bold]: {len(videos)} videos x {len(audio)} languages from {source}")

    storage = Storage(settings)
    report = CatalogIngest(storage).run(str(vfile), str(rfile))
    for r in report.rejects:
        console.print(f"[red]rejected[/red] {r.listing} row {r.row_number} ({r.item}): {r.error_class}: {r.reason}")
    tables = DeltaTables(storage)
    register_bundled_base(tables)
    items = plan_items(tables, settings.render_config)
    shards = make_shards(items, settings.shard_size)
    console.print(f"catalog tables: {storage.uri('catalog')}  (inspect: resync catalog show --root {settings.root})")
    console.print(f"manifest:       {storage.uri('manifests', 'dubs')}")
    console.print(f"plan:           {len(items)} pending (video, language) items in {len(shards)} shard(s)")
    for it in items:
        console.print(f"  {it.video_id:>10} -> {it.language}  input_key {it.input_key[:12]}  attempt {it.attempt}")
    dub_items(storage, settings, items)


def register_bundled_base(tables: DeltaTables) -> str:
    """Put the bundled base model in the registry (once), so plans key on its version."""
    from tasks.model_store import BUNDLED_BASE, load_model

    model = load_model(Settings(), BUNDLED_BASE)
    registry = ModelRegistry(tables)
    if not any(r["version"] == model.version for r in registry.models()):
        registry.register(ModelRecord(model_id=f"base-{model.config.name}", kind="bundle", version=model.version,
                                      uri=str(BUNDLED_BASE), training_data=model.card.training_data))
    return model.version


def dub_items(storage: Storage, settings: Settings, items) -> None:
    """Dub each planned item to ROOT/outputs/{language}/{video_id}/{input_key}.mp4 (skipping finished ones)."""
    from rich.progress import Progress

    from catalogs.errors import ResyncError
    from tasks import model_store
    from tasks.lipsync import DubInputs, dub
    from tasks.train import track_for

    model = model_store.load_model(settings)
    features, cache = model_store.features_for(settings, model), model_store.feature_cache(settings)
    done = []
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("dubbing", total=len(items))
        for it in items:
            out = storage.uri("outputs", it.language, it.video_id, f"{it.input_key}.mp4")
            if not storage.exists(out):
                try:
                    track = track_for(storage, settings, it.video_uri)
                    dub(storage, settings, it.video_uri, DubInputs(it.audio_uri), out, model, features, track, cache)
                except ResyncError as e:
                    console.print(f"[red]failed[/red] {it.video_id} -> {it.language}: {e.error_class}: {e.reason}")
                    bar.advance(task)
                    continue
            done.append(out)
            bar.advance(task)
    console.print(f"[bold]dubbed videos[/bold] ({len(done)} of {len(items)}, model {model.version}):")
    for path in done:
        console.print(f"  {path}")
    console.print("[yellow]not yet[/yellow]: the orchestrated nightly flow (Prefect + Ray) that commits these to the "
                  "manifest, and the QA report.")


if __name__ == "__main__":
    main()
