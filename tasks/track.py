"""Face tracking of one video: landmarks, the speaking face, smoothing, pose, dynamics, crops, flags.

The result is the per-video artifact every later stage reads (DESIGN section 4:
``ROOT/artifacts/tracks/{video_sha256}/{tracker_version}.parquet``); a video dubbed into ten
languages is tracked once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from catalogs.errors import ErrorClass, ResyncError
from catalogs.settings import Settings
from catalogs.storage import Storage
from tasks.audio import load_audio, loudness_lufs, speech_envelope
from tasks.decode import FramePool, VideoSource
from tasks.facemesh import FaceMeshTracker
from tasks.frame_store import BLOCK_ROWS, FrameStore, per_block, use_directory
from tasks.geometry import Similarity, crop_matrix, euler_degrees, fit_pose, template_of, to_canonical
from tasks.landmarks import N_LANDMARKS, mouth_opening
from tasks.smoothing import one_euro_zero_phase

ALGORITHM = "fm0.10.21-v3"  # bump when tracking code changes what it writes
FLAGS = ("no_face", "small_face", "extreme_pose", "low_confidence")
log = logging.getLogger(__name__)


def tracker_version(settings: Settings) -> str:
    """Algorithm plus every setting that changes the artifact: a cache key."""
    knobs = {k: getattr(settings, k) for k in ("max_faces", "cut_correlation", "cut_pixel_diff", "small_face_px", "extreme_yaw_deg", "extreme_pitch_deg",
                                               "low_confidence_residual", "smooth_min_cutoff", "smooth_beta", "crop_size",
                                               "tracking_segments", "min_segment_frames", "tracking_max_side")}
    return f"{ALGORITHM}-{hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:8]}"


@dataclass
class TrackSummary:
    track_id: int
    frames: int
    coverage: float          # share of the video's frames
    mean_face_px: float
    speech_correlation: float | None  # mouth opening vs speech envelope, None without audio


@dataclass
class TrackResult:
    """Everything later stages need about one video's speaking face."""
    video_uri: str
    fps: float
    timestamps: np.ndarray          # (T,) seconds
    width: int
    height: int
    speaker_track: int | None       # the speaker of the longest shot
    tracks: list[TrackSummary]
    shots: list[tuple[int, int, int | None]]  # (first frame, end frame, speaking track) per shot between cuts
    # the three landmark arrays are FrameStores (on disk, read by rows) when tracked or loaded for a
    # dub, plain arrays when a caller builds them; both read alike
    raw: np.ndarray | FrameStore    # (T, 478, 3) float32 image-space landmarks, NaN where no face
    smoothed: np.ndarray | FrameStore  # (T, 478, 3)
    templates: np.ndarray           # (S, 478, 3) canonical mesh of each shot's speaker, unit eye distance
    scale: np.ndarray               # (T,)
    rotation: np.ndarray            # (T, 3, 3)
    translation: np.ndarray         # (T, 3)
    euler: np.ndarray               # (T, 3) yaw, pitch, roll degrees
    displacements: np.ndarray | FrameStore  # (T, 478, 3) canonical mesh - template (the 3D facial dynamics)
    crop: np.ndarray                # (T, 2, 3) image -> aligned crop
    face_px: np.ndarray             # (T,) face width in pixels
    residual: np.ndarray            # (T,) rigid-fit residual, eye distances
    flags: dict[str, np.ndarray]    # name -> (T,) bool
    cut_frames: list[int] = field(default_factory=list)
    faces: list[list[tuple[int, float, float, float, float]]] = field(default_factory=list)  # every track's box per frame
    is_vfr: bool = False
    version: str = ""

    @property
    def n_frames(self) -> int:
        return len(self.timestamps)

    @property
    def valid(self) -> np.ndarray:
        return ~self.flags["no_face"]

    @property
    def shot_index(self) -> np.ndarray:
        """(T,) which shot each frame belongs to."""
        out = np.zeros(self.n_frames, np.int64)
        for k, (a, b, _) in enumerate(self.shots):
            out[a:b] = k
        return out

    @property
    def template(self) -> np.ndarray:
        """The template of the longest shot's speaker."""
        return self.templates[int(np.argmax([b - a for a, b, _ in self.shots]))]

    def canonical(self) -> np.ndarray:
        """(T, 478, 3) pose-free meshes: each frame's shot template plus its displacements."""
        return self.templates[self.shot_index] + self.displacements

    def mouth_openings(self, block: int = BLOCK_ROWS) -> np.ndarray:
        """(T,) mouth opening of the smoothed landmarks, read a block of frames at a time."""
        return per_block(mouth_opening, self.smoothed, block=block)

    def pose(self, i: int) -> Similarity:
        return Similarity(float(self.scale[i]), self.rotation[i], self.translation[i])

    def summary(self) -> dict:
        v = self.valid
        eul = self.euler[v] if v.any() else np.zeros((1, 3))
        return {
            "frames": self.n_frames, "fps": round(self.fps, 3), "vfr": self.is_vfr, "cuts": len(self.cut_frames),
            "tracks": len(self.tracks), "speaker_track": self.speaker_track, "shots": len(self.shots),
            "coverage": round(float(v.mean()), 4),
            "mean_face_px": round(float(np.nanmean(self.face_px[v])), 1) if v.any() else 0.0,
            "yaw_range": [round(float(eul[:, 0].min()), 1), round(float(eul[:, 0].max()), 1)],
            "pitch_range": [round(float(eul[:, 1].min()), 1), round(float(eul[:, 1].max()), 1)],
            "roll_range": [round(float(eul[:, 2].min()), 1), round(float(eul[:, 2].max()), 1)],
            **{f"{k}_frames": int(f.sum()) for k, f in self.flags.items()},
        }


_MAX_LAG = 3


def _correlation(a: np.ndarray, b: np.ndarray, max_lag: int = _MAX_LAG) -> float | None:
    """Best Pearson correlation of two per-frame series within +-``max_lag`` frames (audio and video
    of real footage are often a frame or two apart); None when there is too little to say."""
    best = None
    for k in range(-max_lag, max_lag + 1):
        x, y = a[max(0, k):len(a) + min(0, k)], b[max(0, -k):len(b) + min(0, -k)]
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 10 or np.std(x[ok]) < 1e-9 or np.std(y[ok]) < 1e-9:
            continue
        c = float(np.corrcoef(x[ok], y[ok])[0, 1])
        best = c if best is None else max(best, c)
    return best


def track_video(storage: Storage, settings: Settings, uri: str,
                progress: Callable[[int, int], None] | None = None) -> TrackResult:
    """Track the speaking face of ``uri``. Raises ``ResyncError`` for undecodable media and ``no_face``
    when no face is found in any frame."""
    use_directory(settings.spill_dir)          # where the landmarks wait (process-wide, like tasks.malloc)
    with VideoSource(storage, uri) as video:
        n, fps = video.n_frames, video.fps
        timestamps, (width, height), vfr = video.timestamps, video.size, video.is_vfr
    tracker = track_segments(storage, settings, uri, n, progress)
    if not tracker.tracks:
        raise ResyncError(ErrorClass.NO_FACE, "no face found in any frame", item=uri)

    audio = load_audio(storage, uri, required=False)
    audible = audio is not None and audio.samples.size and loudness_lufs(audio) > settings.silence_lufs
    speech = speech_envelope(audio, timestamps) if audible else None  # a silent track says nothing of who speaks
    del audio
    cuts = sorted(c for c in tracker.cut_frames if 0 < c < n)
    faces: list[list[tuple[int, float, float, float, float]]] = [[] for _ in range(n)]
    per_track = {}
    for t in tracker.tracks:      # each observation is held once: as the tracker's or in its span
        for i, obs in t.frames.items():
            if 0 <= i < n:
                faces[i].append((t.track_id, *obs.box))
        per_track[t.track_id] = TrackSpan.of(t)
        t.frames.clear()
    del tracker
    summaries = _summaries(per_track, speech, 0, n)
    raw = FrameStore(n, (N_LANDMARKS, 3), np.float32, fill=np.nan)
    shots = []
    for a, b in zip([0, *cuts], [*cuts, n]):
        in_shot = [t for t in _summaries(per_track, speech, a, b) if t.frames > 0]
        speaker = choose_speaker(in_shot) if in_shot else None
        if speaker is not None:
            per_track[speaker].copy_into(raw, a, b)
        shots.append((a, b, speaker))
    del per_track
    result = _analyse(uri, raw, shots, summaries, timestamps, fps, width, height, cuts, vfr, settings)
    result.faces = faces
    return result


def track_segments(storage: Storage, settings: Settings, uri: str, n: int,
                   progress: Callable[[int, int], None] | None = None) -> FaceMeshTracker:
    """Face Mesh over all ``n`` frames, in ``settings.tracking_segments`` consecutive segments tracked
    at once (MediaPipe runs one graph on one core; each segment has its own graph and decoder), then
    joined into one tracker whose tracks continue across the segment boundaries."""
    parts = max(1, min(settings.tracking_segments, n // max(settings.min_segment_frames, 1)))
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    done = [0] * parts
    lock = threading.Lock()

    def run(k: int) -> FaceMeshTracker:
        tracker = FaceMeshTracker(max_faces=settings.max_faces, cut_correlation=settings.cut_correlation,
                                  cut_pixel_diff=settings.cut_pixel_diff)
        side = settings.tracking_max_side
        try:
            with VideoSource(storage, uri, threads=settings.decode_threads) as video:
                start = max(bounds[k] - 1, 0)    # the frame before a segment primes its cut detector
                pool = FramePool(capacity=1)     # the tracker keeps no frame: one chunk buffer, decoded into again
                for chunk in video.chunks(settings.tracking_chunk, start, bounds[k + 1], side, settings.decode_chunk_mb,
                                          buffers=pool):
                    for i, frame in zip(chunk.indices, chunk.frames):
                        if i < bounds[k]:
                            tracker.prime(frame)
                        else:
                            tracker.process(int(i), frame)
                    pool.put(chunk.frames)
                    if progress:
                        with lock:
                            done[k] = int(chunk.indices[-1]) + 1 - bounds[k]
                            progress(sum(done), n)
                tracker.rescale(*video.scale_of(side))
        finally:
            tracker.close()
        return tracker

    if parts == 1:
        return run(0)
    with ThreadPoolExecutor(parts, thread_name_prefix="track") as pool:
        trackers = list(pool.map(run, range(parts)))
    first = trackers[0]
    for k, later in enumerate(trackers[1:], start=1):
        first.absorb(later, bounds[k])
    return first


@dataclass
class TrackSpan:
    """One face track over the frames it spans: its landmarks on disk (NaN where it was not seen),
    and in memory the per-frame facts that choosing the speaker needs.

    Only its own span, never the whole video: a video of many shots has a track per face per shot,
    and one whole-video array per track grew with length times shots (at 25 fps an hour is 0.5 GB
    per track)."""
    track_id: int
    start: int
    points: FrameStore      # (stop - start, 478, 3) float32
    width: np.ndarray       # (stop - start,) face width in pixels, NaN where not seen
    opening: np.ndarray     # (stop - start,) mouth opening, NaN where not seen

    @classmethod
    def of(cls, track, block: int = BLOCK_ROWS) -> "TrackSpan":
        start, stop = min(track.frames), max(track.frames) + 1
        pts = FrameStore(stop - start, (N_LANDMARKS, 3), np.float32)
        width, opening = np.full(stop - start, np.nan, np.float32), np.full(stop - start, np.nan, np.float32)
        for a in range(start, stop, block):
            rows = np.full((min(block, stop - a), N_LANDMARKS, 3), np.nan, np.float32)
            for i in range(a, a + len(rows)):
                obs = track.frames.get(i)
                if obs is not None:
                    rows[i - a] = obs.points
            seen = np.isfinite(rows[:, 0, 0])
            width[a - start: a - start + len(rows)][seen] = rows[seen, :, 0].max(1) - rows[seen, :, 0].min(1)
            opening[a - start: a - start + len(rows)] = mouth_opening(rows)
            pts.write(a - start, rows)
        return cls(track.track_id, start, pts, width, opening)

    @property
    def stop(self) -> int:
        return self.start + len(self.points)

    def window(self, a: int, b: int, pad: int = 0) -> tuple[int, np.ndarray, np.ndarray]:
        """(lo, width, opening) over frames [lo, hi): the part of [a, b) this track spans, widened by
        ``pad`` frames each side (NaN there, still inside [a, b)), so a lagged correlation pairs what
        a whole-video array would."""
        lo, hi = max(a, self.start - pad), min(b, self.stop + pad)
        width, opening = np.full(max(hi - lo, 0), np.nan, np.float32), np.full(max(hi - lo, 0), np.nan, np.float32)
        s, e = max(lo, self.start), min(hi, self.stop)
        if s < e:
            width[s - lo: e - lo] = self.width[s - self.start: e - self.start]
            opening[s - lo: e - lo] = self.opening[s - self.start: e - self.start]
        return lo, width, opening

    def copy_into(self, out: FrameStore | np.ndarray, a: int, b: int, block: int = BLOCK_ROWS) -> None:
        """Write this track's landmarks of frames [a, b) into the whole-video ``out``, a block at a time."""
        stop = min(b, self.stop)
        for s in range(max(a, self.start), stop, block):
            e = min(s + block, stop)
            out[s:e] = self.points.read(s - self.start, e - self.start)


def _summaries(per_track: dict[int, TrackSpan], speech: np.ndarray | None, a: int, b: int) -> list[TrackSummary]:
    """Each track's presence, size and speech correlation within frames [a, b)."""
    out = []
    for tid, span in per_track.items():
        lo, width, opening = span.window(a, b, pad=_MAX_LAG)
        present = np.isfinite(width)
        if not present.any():
            out.append(TrackSummary(tid, 0, 0.0, 0.0, None))
            continue
        corr = _correlation(opening, speech[lo:lo + len(opening)]) if speech is not None else None
        out.append(TrackSummary(tid, int(present.sum()), float(present.sum()) / max(b - a, 1),
                                float(width[present].mean()), corr))
    return out


def choose_speaker(tracks: list[TrackSummary], min_coverage: float = 0.2, margin: float = 0.1) -> int:
    """The face whose mouth follows the speech clearly better than the others' (by ``margin``);
    otherwise (one face, no audio, no clear winner) the largest well-covered face."""
    covered = [t for t in tracks if t.coverage >= min_coverage] or tracks
    scored = sorted((t for t in covered if t.speech_correlation is not None), key=lambda t: t.speech_correlation, reverse=True)
    if len(covered) > 1 and len(scored) == len(covered) and scored[0].speech_correlation - scored[1].speech_correlation >= margin:
        return scored[0].track_id
    return max(covered, key=lambda t: t.mean_face_px * t.coverage).track_id


def _analyse(uri: str, raw: FrameStore, shots: list[tuple[int, int, int | None]], tracks: list[TrackSummary],
             timestamps: np.ndarray, fps: float, width: int, height: int, cuts: list[int], vfr: bool,
             settings: Settings, block: int = BLOCK_ROWS) -> TrackResult:
    """Smoothing, templates, pose, dynamics, crops and flags of the speaker's landmarks. The
    landmark arrays stay on disk and are read a block of frames at a time; only per-frame scalars
    are held for the whole video."""
    n = len(raw)
    valid, face_px = np.zeros(n, bool), np.full(n, np.nan)
    for a, rows in raw.blocks(block):
        ok = np.isfinite(rows[:, 0, 0])
        valid[a:a + len(rows)] = ok
        face_px[a:a + len(rows)][ok] = rows[ok, :, 0].max(1) - rows[ok, :, 0].min(1)
    restart = np.zeros(n, bool)
    restart[[c for c in cuts if c < n]] = True
    smoothed = one_euro_zero_phase(raw, timestamps, valid, restart, min_cutoff=settings.smooth_min_cutoff,
                                   beta=settings.smooth_beta, scale=np.nan_to_num(face_px, nan=1.0), dtype=np.float32)

    templates = np.zeros((len(shots), N_LANDMARKS, 3))
    for k, (a, b, _) in enumerate(shots):  # one template per shot: a cut may bring another person
        if valid[a:b].any():
            templates[k] = template_of(smoothed, a + np.flatnonzero(valid[a:b]))
    shot_of = np.zeros(n, np.int64)
    for k, (a, b, _) in enumerate(shots):
        shot_of[a:b] = k
    scale, rot, trans = np.zeros(n), np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 3))
    euler, residual = np.zeros((n, 3)), np.zeros(n)
    disp = FrameStore(n, (N_LANDMARKS, 3), np.float32)        # zeros where no face
    crop = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (n, 1, 1))
    for a in range(0, n, block):
        if not valid[a:a + block].any():
            continue
        smooth_rows, raw_rows = smoothed.read(a, a + block), raw.read(a, a + block)
        disp_rows = np.zeros_like(smooth_rows)
        for i in a + np.flatnonzero(valid[a:a + block]):
            template, smooth_i = templates[shot_of[i]], smooth_rows[i - a]
            pose, _ = fit_pose(smooth_i.astype(np.float64), template)
            scale[i], rot[i], trans[i] = pose.scale, pose.rotation, pose.translation
            euler[i] = euler_degrees(pose.rotation)
            disp_rows[i - a] = to_canonical(smooth_i.astype(np.float64), pose) - template
            crop[i] = crop_matrix(smooth_i, settings.crop_size)
            residual[i] = fit_pose(raw_rows[i - a].astype(np.float64), template)[1]  # of the raw tracking: its confidence
        disp.write(a, disp_rows)
    flags = {
        "no_face": ~valid,
        "small_face": valid & (np.nan_to_num(face_px) < settings.small_face_px),
        "extreme_pose": valid & ((np.abs(euler[:, 0]) > settings.extreme_yaw_deg) | (np.abs(euler[:, 1]) > settings.extreme_pitch_deg)),
        "low_confidence": valid & (residual > settings.low_confidence_residual),
    }
    longest = max(shots, key=lambda s: s[1] - s[0])
    return TrackResult(uri, fps, np.asarray(timestamps, np.float64), width, height, longest[2], tracks, shots, raw,
                       smoothed, templates.astype(np.float32), scale, rot, trans, euler, disp, crop, face_px, residual,
                       flags, list(cuts), vfr, tracker_version(settings))


def track_cached(storage: Storage, settings: Settings, uri: str, video_sha256: str,
                 progress: Callable[[int, int], None] | None = None) -> tuple[TrackResult, str, bool]:
    """The track artifact for a catalog video: reused when present for this sha256 and tracker
    version, else tracked and saved. Returns (result, artifact URI, reused)."""
    from tasks import track_artifact

    use_directory(settings.spill_dir)          # a loaded artifact's landmarks wait there too
    art = track_artifact.artifact_uri(storage, video_sha256, tracker_version(settings))
    if storage.exists(art):
        return track_artifact.load(storage, art), art, True
    result = track_video(storage, settings, uri, progress)
    track_artifact.save(storage, result, art, video_sha256)
    return result, art, False
