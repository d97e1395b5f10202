"""Real media for catalog tests: the shared clips plus bad files made here with ffmpeg."""

from __future__ import annotations

from pathlib import Path

from catalogs.settings import Settings
from catalogs.storage import Storage, is_s3
from tests.conftest import run_ffmpeg


def make_bad_files(shared: Path, out: Path) -> dict[str, Path]:
    """Synthetic bad inputs, each named for what is wrong with it."""
    out.mkdir(parents=True, exist_ok=True)
    clip = shared / "videos" / "speaker_map_5s.mp4"
    files = {
        "zero_bytes.mp4": out / "zero_bytes.mp4",
        "truncated.mp4": out / "truncated.mp4",
        "text_renamed.mp4": out / "text_renamed.mp4",
        "audio_only.mp4": out / "audio_only.mp4",
        "still.png": out / "still.png",
        "bad_audio.wav": out / "bad_audio.wav",
        "zero_audio.wav": out / "zero_audio.wav",
        "rotated.mp4": out / "rotated.mp4",
    }
    files["zero_bytes.mp4"].write_bytes(b"")
    files["truncated.mp4"].write_bytes(clip.read_bytes()[:3000])
    files["text_renamed.mp4"].write_text("this is a subtitle file, not a video\n" * 20)
    run_ffmpeg("-i", str(shared / "audio" / "french1.wav"), "-c:a", "aac", str(files["audio_only.mp4"]))
    run_ffmpeg("-i", str(clip), "-frames:v", "1", str(files["still.png"]))
    files["bad_audio.wav"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + b"\x13" * 400)
    files["zero_audio.wav"].write_bytes(b"")
    # A phone-style clip: portrait display via the MP4 rotate tag, frames stored landscape.
    run_ffmpeg("-i", str(shared / "videos" / "actor_1080p_4s.mp4"), "-t", "1", "-c", "copy",
               "-metadata:s:v", "rotate=90", str(files["rotated.mp4"]))
    return files


def stage(settings: Settings, files: dict[str, Path]) -> dict[str, str]:
    """URIs for ``files`` where the test's storage lives: local paths, or uploads under s3://.../media."""
    if not is_s3(settings.root):
        return {name: str(p) for name, p in files.items()}
    bucket = settings.root.split("/")[2]
    storage = Storage(settings)
    uris = {}
    for name, p in files.items():
        uri = f"s3://{bucket}/media/{name}"
        storage.put_file(p, uri)
        uris[name] = uri
    return uris
