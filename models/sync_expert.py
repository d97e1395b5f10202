"""An audio-visual sync expert in the manner of SyncNet (Chung & Zisserman, 2016).

Two small encoders map a short mouth window (``window`` video frames of lip landmarks, normalised
by the caller) and the audio around the same instant (log-mel frames) into one embedding space,
where in-sync pairs lie close and pairs shifted in time or taken from another clip lie far apart.
Judging a video is then a search over offsets: the mean distance between every mouth window and
the audio ``k`` frames earlier, for ``k`` in ``-max_offset..max_offset``. As in SyncNet the offset is
the ``k`` of the smallest mean distance, the confidence is the median minus the minimum of that
curve (LSE-C) and the distance is its minimum (LSE-D).

It shares no weights with the Style-SyncFormer and never sees what the Style-SyncFormer planned:
QA feeds it only the output's own audio and re-tracked mouth, so it measures whether the mouth
matches the speech, not whether the renderer obeyed the plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SyncExpertConfig:
    mouth_dim: int = 9           # per-frame mouth shape measures (tasks.sync.mouth_features)
    window: int = 5              # video frames per mouth window (200 ms at 25 fps)
    audio_features: str = "whisper"  # what the audio encoder reads: whisper (frozen encoder, 50 Hz) or logmel (40 bins, 100 Hz)
    audio_dim: int = 384         # features per audio frame
    audio_frames: int = 11       # audio frames per window (+-100 ms around the video frame)
    hidden: int = 32
    embed_dim: int = 32
    max_offset: int = 15         # offsets searched, in video frames, either way
    temperature: float = 0.1     # of the contrastive loss
    dropout: float = 0.5
    audio_project: int = 8       # >0: a per-frame linear projection of the audio features to this width first
    input_dropout: float = 0.3   # dropout on the audio features (wide pretrained features overfit little data)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SyncExpertConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class ConvBlock(nn.Module):
    """Conv1d over time, normalisation and a leaky ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(8, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


class MouthEncoder(nn.Module):
    """(B, window, mouth_dim) mouth features -> (B, embed_dim) unit embedding."""

    def __init__(self, c: SyncExpertConfig) -> None:
        super().__init__()
        self.blocks = nn.Sequential(ConvBlock(c.mouth_dim, c.hidden), ConvBlock(c.hidden, c.hidden),
                                    ConvBlock(c.hidden, c.hidden))
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden * c.window, c.embed_dim)

    def forward(self, mouth: torch.Tensor) -> torch.Tensor:
        h = self.blocks(mouth.transpose(1, 2))
        return F.normalize(self.out(self.drop(h.flatten(1))), dim=-1)


class AudioEncoder(nn.Module):
    """(B, audio_frames, audio_dim) audio features window -> (B, embed_dim) unit embedding."""

    def __init__(self, c: SyncExpertConfig) -> None:
        super().__init__()
        width = c.audio_project or c.audio_dim
        self.input_drop = nn.Dropout(c.input_dropout)
        self.project = nn.Linear(c.audio_dim, width) if c.audio_project else nn.Identity()
        self.blocks = nn.Sequential(ConvBlock(width, c.hidden), ConvBlock(c.hidden, c.hidden, stride=2),
                                    ConvBlock(c.hidden, c.hidden, stride=2))
        frames = c.audio_frames
        for _ in range(2):
            frames = (frames - 1) // 2 + 1
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden * frames, c.embed_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.project(self.input_drop(mel)).transpose(1, 2))
        return F.normalize(self.out(self.drop(h.flatten(1))), dim=-1)


class SyncExpert(nn.Module):
    def __init__(self, config: SyncExpertConfig | None = None) -> None:
        super().__init__()
        self.config = config or SyncExpertConfig()
        self.mouth = MouthEncoder(self.config)
        self.audio = AudioEncoder(self.config)

    def forward(self, mouth: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mouth(mouth), self.audio(mel)


def contrastive_loss(mouth: torch.Tensor, audio: torch.Tensor, valid: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """InfoNCE within one stretch of a clip: mouth window t against the audio of every frame of the
    stretch, in sync only at t (and the same for each audio window against the mouths).

    ``mouth``, ``audio``: (B, L, D) unit embeddings of B stretches of L frames; ``valid``: (B, L).
    Only the same clip's audio: another clip's is told apart by its voice (a shortcut that learns
    who speaks, not when), while the same voice at the wrong time can only be told by timing."""
    logits = torch.einsum("bid,bjd->bij", mouth, audio) / temperature      # (B, L, L)
    target = torch.arange(mouth.shape[1], device=mouth.device).expand(mouth.shape[0], -1)
    pair = valid[:, :, None] & valid[:, None, :]
    logits = logits.masked_fill(~pair, -1e4)
    rows = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
    cols = F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), target.flatten(), reduction="none")
    keep = valid.flatten().float()
    return ((rows + cols) * keep).sum() / (2 * keep.sum().clamp_min(1))


def offset_distances(mouth: torch.Tensor, audio: torch.Tensor, valid: torch.Tensor,
                     max_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per offset k in -max_offset..max_offset, the mean distance between mouth window t and the
    audio at t - k over the valid windows (positive k: the mouth comes after the sound).

    ``mouth``, ``audio``: (T, D) unit embeddings per frame; ``valid``: (T,) mouth windows to use.
    Returns (offsets (2m+1,), distances (2m+1,)); NaN where an offset leaves no pair."""
    n = len(mouth)
    offsets = torch.arange(-max_offset, max_offset + 1)
    out = torch.full((len(offsets),), float("nan"))
    for j, k in enumerate(offsets.tolist()):
        t = torch.arange(max(k, 0), n + min(k, 0))
        t = t[valid[t]]
        if len(t):
            out[j] = (mouth[t] - audio[t - k]).norm(dim=-1).mean()
    return offsets, out


def eye_distance(points: torch.Tensor, left_eye: torch.Tensor, right_eye: torch.Tensor) -> torch.Tensor:
    """(..., V, >=2) landmarks -> (...) distance between the eye centres (means of ``left_eye`` and
    ``right_eye``) in the image plane: the scale the mouth measures are taken in."""
    p = points[..., :2]
    return (p[..., right_eye, :].mean(-2) - p[..., left_eye, :].mean(-2)).norm(dim=-1)


def shape_measures(points: torch.Tensor, pairs: torch.Tensor, left_eye: torch.Tensor,
                   right_eye: torch.Tensor) -> torch.Tensor:
    """(..., V, >=2) landmarks -> (..., P) distances between the landmark ``pairs`` (P, 2) over the
    eye distance: the mouth measures the expert reads (``tasks.sync.mouth_features`` takes them from
    tracked landmarks), differentiable, so a model's drawn mouth can be judged too."""
    p = points[..., :2]
    scale = eye_distance(p, left_eye, right_eye).clamp_min(1e-6)
    return (p[..., pairs[:, 0], :] - p[..., pairs[:, 1], :]).norm(dim=-1) / scale[..., None]


class ExpertSyncLoss(nn.Module):
    """A frozen sync expert as a training loss (Wav2Lip's recipe): the mouth drawn by a model is
    embedded by the expert and contrasted with the audio of every frame of its window, so motion
    that is in sync with its own sound, and only there, scores well. The audio side is the expert's
    embedding of the real track, computed once per clip (``tasks.sync.audio_embedding``)."""

    def __init__(self, expert: SyncExpert, pairs: torch.Tensor, left_eye: torch.Tensor, right_eye: torch.Tensor,
                 feature_scale: float) -> None:
        super().__init__()
        self.expert = expert.eval().requires_grad_(False)
        self.register_buffer("pairs", torch.as_tensor(pairs, dtype=torch.long))
        self.register_buffer("left_eye", torch.as_tensor(left_eye, dtype=torch.long))
        self.register_buffer("right_eye", torch.as_tensor(right_eye, dtype=torch.long))
        self.feature_scale = feature_scale

    def train(self, mode: bool = True) -> "ExpertSyncLoss":
        super().train(mode)
        self.expert.eval()           # frozen: never its dropout
        return self

    def forward(self, meshes: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """meshes: (B, T, V, 3) drawn meshes (any frontal frame); audio: (B, T, D) the expert's audio
        embedding of each frame; mask: (B, T) 1 where a frame is real. The window's median shape is
        taken out, as the expert's inputs are (how the mouth moves, not whose mouth it is)."""
        w = self.expert.config.window
        if meshes.shape[1] < w + 1:
            return meshes.sum() * 0
        rel = shape_measures(meshes, self.pairs, self.left_eye, self.right_eye)          # (B, T, P)
        real = mask > 0
        centre = torch.nanmedian(torch.where(real[..., None], rel, torch.nan), dim=1).values
        feats = (rel - torch.nan_to_num(centre)[:, None]) * self.feature_scale
        windows = feats.unfold(1, w, 1).transpose(2, 3)                                   # (B, T-w+1, w, P)
        b, n = windows.shape[:2]
        mouth = self.expert.mouth(windows.reshape(b * n, w, -1)).reshape(b, n, -1)
        valid = real.unfold(1, w, 1).all(-1)
        return contrastive_loss(mouth, audio[:, w // 2:w // 2 + n], valid, self.expert.config.temperature)


def config_dict(model: SyncExpert) -> dict:
    return {"kind": "sync-expert", **model.config.to_dict()}


__all__ = ["AudioEncoder", "ExpertSyncLoss", "MouthEncoder", "SyncExpert", "SyncExpertConfig", "config_dict",
           "contrastive_loss", "eye_distance", "offset_distances", "shape_measures"]
