"""What the encoder is handed is a function of the frame alone.

PyAV allocates a frame's own planes with rows padded for alignment (200 pixels -> 208 bytes), and
the padding keeps whatever the allocator had there before. The frames we encode wrap OpenCV's I420
buffer instead, rows without padding; the tests fill freed memory first to show that nothing of it
reaches the encoder.
"""

from __future__ import annotations

import gc
import subprocess

import av
import cv2
import numpy as np
import pytest

from catalogs.errors import ErrorClass, ResyncError
from tasks.encode import AudioEncoding, encode_h264, mux_audio, video_frame

WIDTH, HEIGHT = 200, 120    # rows of 200 pixels are padded (to 208 and 112 bytes): not on x264's grid


def frames(n: int = 1) -> list[np.ndarray]:
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    return [np.stack([(x * 255 // WIDTH + 9 * k) % 256, y * 2 % 256, (x + y + k) % 256], -1).astype(np.uint8)
            for k in range(n)]


def leave_in_freed_memory(value: int, count: int = 64) -> None:
    """Allocate frames of the test's size filled with ``value`` and free them, so that the next
    frames allocated may get that memory back, padding included."""
    held = []
    for _ in range(count):
        f = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        for plane in f.planes:
            plane.update(bytes([value]) * plane.buffer_size)
        held.append(f)
    del held


def test_a_frames_planes_padding_included_do_not_depend_on_what_memory_held_before():
    planes = []
    for value in (0, 255, 77):
        leave_in_freed_memory(value)
        planes.append([bytes(p) for p in video_frame(frames(1)[0], "yuv420p").planes])
    assert planes[0] == planes[1] == planes[2]


def test_a_frame_holds_its_i420_planes_after_the_converters_buffer_is_gone():
    """The frame wraps OpenCV's I420 buffer without a copy: its planes are that buffer's Y, U and V,
    still there when nothing else refers to the buffer and freed memory has been written over."""
    rgb = frames(1)[0]
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1)
    frame = video_frame(rgb.copy(), "yuv420p")
    gc.collect()
    leave_in_freed_memory(255)
    quarter = (HEIGHT // 2) * (WIDTH // 2)
    y, u, v = (bytes(p) for p in frame.planes)
    assert [p.line_size for p in frame.planes] == [WIDTH, WIDTH // 2, WIDTH // 2]
    assert y == i420[:HEIGHT * WIDTH].tobytes()
    assert u == i420[HEIGHT * WIDTH:HEIGHT * WIDTH + quarter].tobytes() and v == i420[HEIGHT * WIDTH + quarter:].tobytes()


def stream_seconds(path, kind: str) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", kind, "-show_entries", "stream=duration",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def test_audio_encoded_beside_the_frames_is_padded_or_cut_and_muxed_by_copy(tmp_path):
    """The dub's sound is encoded while its frames are made (``AudioEncoding``), to the video's
    duration: 2 s of tone padded to 3 s, or cut to 1 s; the mux then copies both streams."""
    tone = tmp_path / "tone.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=2", str(tone)], check=True)
    silent = tmp_path / "silent.mp4"
    encode_h264(str(silent), frames(75), 25.0)                       # 3 s of video
    for seconds in (3.0, 1.0):
        encoding = AudioEncoding(str(tone), str(tmp_path / f"audio{seconds}.m4a"), seconds)
        aac = encoding.result()
        encoding.stop()                                              # after the result: nothing left to do
        assert stream_seconds(aac, "a") == pytest.approx(seconds, abs=0.03)
    out = tmp_path / "out.mp4"
    mux_audio(str(silent), str(tmp_path / "audio3.0.m4a"), str(out))
    assert stream_seconds(out, "a") == pytest.approx(3.0, abs=0.03) and stream_seconds(out, "v") == pytest.approx(3.0)


def test_a_failed_audio_encode_is_a_typed_error_and_a_stopped_one_ends(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(ResyncError) as err:
        AudioEncoding(str(broken), str(tmp_path / "a.m4a"), 1.0).result()
    assert err.value.error_class == ErrorClass.INTERNAL and "audio encode" in str(err.value)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=120", str(tmp_path / "long.wav")],
                   check=True)
    running = AudioEncoding(str(tmp_path / "long.wav"), str(tmp_path / "b.m4a"), 120.0)
    assert running._proc.poll() is None                              # 2 min of AAC: still encoding
    running.stop()                                                   # the dub failed first
    assert running._proc.returncode is not None
