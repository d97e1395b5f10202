"""``make demo``: build a small demo catalog, ingest it and plan the nightly run, on embedded defaults.

Uses real clips from ../shared/data when that folder is there; otherwise makes its own media: a
still portrait shipped by scikit-image as a 5 s video, and speech from espeak-ng in two languages.
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
    items = plan_items(tables, settings.render_config)
    shards = make_shards(items, settings.shard_size)
    console.print(f"catalog tables: {storage.uri('catalog')}  (inspect: resync catalog show --root {settings.root})")
    console.print(f"manifest:       {storage.uri('manifests', 'dubs')}")
    console.print(f"plan:           {len(items)} pending (video, language) items in {len(shards)} shard(s)")
    for it in items:
        console.print(f"  {it.video_id:>10} -> {it.language}  input_key {it.input_key[:12]}  attempt {it.attempt}")
    console.print("[yellow]nothing to dub yet[/yellow]: tracking, the models and the nightly flow are not built yet; "
                  "the plan above is what the nightly run will dub.")


if __name__ == "__main__":
    main()
