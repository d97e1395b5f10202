"""The two model configurations, in one place: ``cpu`` (trains and runs on 2 cores) and ``full``
(the paper's 256-px setting, for GPUs). Everything a network needs to be rebuilt is here, and a
config is saved beside every checkpoint as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class SyncFormerConfig:
    audio_dim: int = 384          # Whisper tiny encoder width
    # Feature frames (at the extractor's rate, relative to a video frame's time) read for that frame.
    # The mouth moves before the sound it makes: across the shared clips a linear probe reads the
    # mouth best from audio 40-80 ms ahead, so the cpu/full configs read a window that leans ahead.
    # (0,) is the single frame at the frame's time, what checkpoints without this field read.
    audio_offsets: tuple[int, ...] = (0,)
    d_model: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.1
    style_dim: int = 64
    style_window: int = 50        # frames of reference motion the style code is encoded from
    n_vertices: int = 478         # all Face Mesh vertices (or a subset, see vertex_subset)
    lip_weight: float = 5.0       # extra weight of lip vertices in the vertex loss
    velocity_weight: float = 0.5
    max_frames: int = 512         # longest sequence in one forward pass (longer audio is windowed)
    members: int = 1              # Style-SyncFormers trained apart and averaged (models.syncformer.SyncFormerEnsemble)


@dataclass(frozen=True)
class GeneratorConfig:
    size: int = 128               # crop side
    style_dim: int = 128          # width of w
    channels: dict[int, int] = field(default_factory=lambda: {4: 128, 8: 128, 16: 96, 32: 64, 64: 48, 128: 32, 256: 16})
    guide_channels: int = 4       # mesh rendering (1) + masked target crop (3)
    encoder_base: int = 32        # width of the first layer of the style (reference) encoder


@dataclass(frozen=True)
class DiscriminatorConfig:
    size: int = 128
    channels: dict[int, int] = field(default_factory=lambda: {4: 128, 8: 128, 16: 128, 32: 96, 64: 64, 128: 32, 256: 16})
    r1_gamma: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    name: str
    syncformer: SyncFormerConfig
    generator: GeneratorConfig
    discriminator: DiscriminatorConfig
    # The dtype tensors are stored in. float16 halves a checkpoint (the bundled base's three
    # Style-SyncFormers fit the 20 MB budget that way); they load into float32 parameters, and the
    # rounding moves the generator's output by about 0.01 grey levels on average.
    weights_dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        def ints(ch: dict) -> dict[int, int]:
            return {int(k): int(v) for k, v in ch.items()}

        g, dc, sf = dict(d["generator"]), dict(d["discriminator"]), dict(d["syncformer"])
        g["channels"], dc["channels"] = ints(g["channels"]), ints(dc["channels"])
        if "audio_offsets" in sf:
            sf["audio_offsets"] = tuple(int(o) for o in sf["audio_offsets"])
        return ModelConfig(d["name"], SyncFormerConfig(**sf), GeneratorConfig(**g), DiscriminatorConfig(**dc),
                           d.get("weights_dtype", "float32"))


# -80..+160 ms around the frame at 50 Hz (Whisper). A SyncFormer pooled over the shared clips and
# scored on their held-out last 30% reached a mouth-opening correlation of 0.52 (mean over clips)
# with this window against 0.36 with the single frame, same recipe and budget.
AUDIO_AHEAD = (-4, -2, 0, 2, 4, 6, 8)
# The CPU discriminator is small (0.35 M parameters, 1.4 MB) so that the bundled base can carry it
# within its 20 MB budget: fine-tunes then start from a D that knows the base's drawings.
CPU = ModelConfig("cpu", SyncFormerConfig(audio_offsets=AUDIO_AHEAD, dropout=0.3), GeneratorConfig(size=128),
                  DiscriminatorConfig(size=128, channels={4: 64, 8: 64, 16: 64, 32: 48, 64: 32, 128: 24}))
FULL = ModelConfig(
    "full",
    SyncFormerConfig(d_model=256, heads=8, encoder_layers=4, decoder_layers=4, style_dim=128, ff_mult=4,
                     audio_offsets=AUDIO_AHEAD, dropout=0.3),
    GeneratorConfig(size=256, style_dim=512, channels={4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64},
                    encoder_base=64),
    DiscriminatorConfig(size=256, channels={4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}, r1_gamma=10.0),
)
CONFIGS = {"cpu": CPU, "full": FULL}


def get_config(name: str) -> ModelConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown model configuration {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[name]


__all__ = ["CPU", "FULL", "CONFIGS", "ModelConfig", "SyncFormerConfig", "GeneratorConfig", "DiscriminatorConfig",
           "get_config", "replace"]
