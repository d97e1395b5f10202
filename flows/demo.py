"""``make demo``: build a small demo catalog, ingest it, run the nightly flow on embedded defaults
(Prefect's ephemeral API, a local Ray cluster on 127.0.0.1, the storage root on the local disk)
with the bundled base model, and write the QA report.

Uses real clips from ../shared/data when that folder is there; otherwise makes its own media: a
still portrait shipped by scikit-image as a 5 s video, and speech from espeak-ng in two languages.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import typer
from rich.console import Console

from catalogs.delta import DeltaTables
from catalogs.ingest import CatalogIngest
from catalogs.manifest import DubManifest
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
        # at 512 px her face is 93 px wide, under small_face_px (100): every frame would pass through
        # unchanged. Twice the size makes it 186 px, a face the dub redraws.
        _run("ffmpeg", "-y", "-v", "error", "-loop", "1", "-i", str(png), "-t", "5", "-r", "25",
             "-vf", "scale=1024:1024:flags=lanczos", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video))
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
    os.environ.setdefault("PREFECT_HOME", str(REPO / ".work" / "prefect"))
    # Prefect makes its home without its parents: in a fresh clone .work is not there yet, and the
    # ephemeral API server then cannot open its database ("unable to open database file")
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
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
    allowed = [*settings.allowed_roots, str(SHARED), str(demo)]
    os.environ["RESYNC_ALLOWED_ROOTS"] = json.dumps(allowed)
    settings = Settings(allowed_roots=allowed)
    vfile, rfile = write_listings(demo, videos, audio)
    console.print(f"[bold]demo catalog[/bold]: {len(videos)} videos x {len(audio)} languages from {source}")
    report = CatalogIngest(Storage(settings)).run(str(vfile), str(rfile))
    for r in report.rejects:
        console.print(f"[red]rejected[/red] {r.listing} row {r.row_number} ({r.item}): {r.error_class}: {r.reason}")

    from flows.cli_run import dubbing_run
    from flows.nightly import nightly_localization

    try:
        dubbing_run(nightly_localization, False)
    except typer.Exit as e:
        if e.exit_code not in (0, 3):
            raise SystemExit(e.exit_code)
    from flows.qa import qa_report

    report = qa_report(output=str(root / "reports" / "demo-qa.html"))
    show_results(settings)
    console.print(f"QA report: {report.html_uri}  ({report.needs_review} of {report.succeeded} dubs need review; "
                  f"table {report.table_uri})", soft_wrap=True)


def show_results(settings: Settings) -> None:
    """Where everything is: the dubbed videos, the manifest and how to look at it."""
    storage = Storage(settings)
    latest = DubManifest(DeltaTables(storage)).latest()
    console.print(f"[bold]dubbed videos[/bold] ({int((latest.status == 'succeeded').sum())} of {len(latest)}):")
    for _, r in latest.iterrows():
        console.print(f"  {r.video_id:>10} -> {r.language}: " + (r.output_uri if r.status == "succeeded"
                                                                 else f"[red]{r.error_class}[/red] {r.error}"), soft_wrap=True)
    console.print(f"manifest:  {storage.uri('manifests', 'dubs')}  (Delta table; every run is a version)", soft_wrap=True)
    console.print(f"catalog:   resync catalog show --root {settings.root}")


if __name__ == "__main__":
    main()
