"""What the encoder is handed is a function of the frame alone, the rows' alignment padding included.

PyAV allocates a frame's planes with rows padded for alignment (200 pixels -> 208 bytes) and copies
only the picture into them: the padding kept whatever the allocator had there before.
"""

from __future__ import annotations

import av
import numpy as np

from tasks.encode import video_frame

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

