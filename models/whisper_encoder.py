"""Whisper's audio encoder in PyTorch, with the weights read from a CTranslate2 model directory.

Why not CTranslate2 itself: its ``encode`` returns only the last layer, and for mouths the last
layer is not the best. Whisper's last block is shaped for the text decoder's cross-attention; one
block earlier the states still say more about how the sound is made. Ridge probes of mouth opening
(the Style-SyncFormer's 7 feature frames per video frame, lambda 3000), leave-one-speaker-out over
the 44 speakers of ../shared/data/train/: the states after block 3 of tiny.en's 4 predicted the
left-out speaker's opening better than the final output on 43 of 52 clips (mean r 0.598 against
0.509); after block 2, about as well as after block 3. (First chosen on the shared clips of the
time, before train/ existed; re-checked on train/ alone 2026-12-07.) The same network in PyTorch
also runs a 30-s window faster on this CPU (0.20 s against 0.28 s for CTranslate2 float32, 2 threads).

The weights are parsed from CTranslate2's ``model.bin`` (a plain binary layout: name, shape,
dtype, bytes per variable; nothing is unpickled), so the one Whisper folder on a machine serves
both the ASR (whisperx) and these features. The final output matches CTranslate2's ``encode`` to
float rounding (tested).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

import torch
import torch.nn.functional as F
from torch import nn

# CTranslate2's DataType enum (include/ctranslate2/types.h); only float weights are read here.
_FLOAT_TYPES = {0: torch.float32, 4: torch.float16, 5: torch.bfloat16}
_TYPE_NAMES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


def _read_string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n)[:-1].decode("utf-8")  # written with a trailing NUL


def _variables(f: BinaryIO, path: str | os.PathLike[str]) -> Iterator[tuple[str, tuple[int, ...], int, int]]:
    """(name, shape, type id, byte count) of every variable in an open ``model.bin``, the file
    positioned at that variable's bytes; bytes the caller does not read are skipped."""
    header = f.read(4)
    if len(header) != 4:
        raise ValueError(f"{path} is not a CTranslate2 model file (empty)")
    (version,) = struct.unpack("<I", header)
    if version not in (5, 6):
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported (5 or 6: "
                         "convert the model with CTranslate2 3.0 or newer)")
    _read_string(f)                       # spec name
    f.read(4)                             # spec revision
    (count,) = struct.unpack("<I", f.read(4))
    for _ in range(count):
        try:
            name = _read_string(f)
            (rank,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack(f"<{rank}I", f.read(4 * rank))
            (type_id,) = struct.unpack("<B", f.read(1))
            (n_bytes,) = struct.unpack("<I", f.read(4))
        except (struct.error, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is truncated or not a CTranslate2 model ({e})") from e
        start = f.tell()
        yield name, shape, type_id, n_bytes
        f.seek(start + n_bytes)


def read_ctranslate2_encoder(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The ``encoder/...`` variables of a CTranslate2 ``model.bin`` as float32 tensors.

    Raises ValueError on a file that is not a CTranslate2 model or holds quantized encoder weights
    (int8 models: convert with ``--quantization float16`` or use a float model)."""
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        for name, shape, type_id, n_bytes in _variables(f, path):
            if not name.startswith("encoder/") or name == "encoder/num_heads":
                continue
            if type_id not in _FLOAT_TYPES:
                kind = _TYPE_NAMES[type_id] if type_id < len(_TYPE_NAMES) else str(type_id)
                raise ValueError(f"{path}: encoder variable {name} is {kind}; only float Whisper models are supported")
            data = bytearray(f.read(n_bytes))
            if len(data) != n_bytes:
                raise ValueError(f"{path} is truncated (in {name})")
            out[name] = torch.frombuffer(data, dtype=_FLOAT_TYPES[type_id]).reshape(shape).float()
    if "encoder/conv1/weight" not in out:
        raise ValueError(f"{path} holds no Whisper encoder (no encoder/conv1/weight)")
    return out


def _is_block(name: str) -> bool:
    """One variable per encoder block: its first MLP layer's weight."""
    return name.startswith("encoder/layer_") and name.endswith("/ffn/linear_0/weight")


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection, as CTranslate2 stores it."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: attention, then a GELU MLP, each added to the residual stream."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attn_norm, self.attn = nn.LayerNorm(dim), SelfAttention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class WhisperEncoder(nn.Module):
    """(B, 80, 3000) log-mel -> (B, 1500, dim) states at 50 Hz, after any number of blocks."""

    def __init__(self, dim: int, heads: int, hidden: int, n_blocks: int, n_mels: int = 80, n_positions: int = 1500) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(n_positions, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(dim)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def forward(self, mel: torch.Tensor, blocks: int | None = None) -> torch.Tensor:
        """States after the first ``blocks`` blocks (the residual stream, not normalised); None: all
        of them and the final layer norm, i.e. what Whisper's decoder reads."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        for block in self.blocks[: self.n_blocks if blocks is None else blocks]:
            x = block(x)
        return self.norm(x) if blocks is None else x

    @classmethod
    def from_ctranslate2(cls, model_dir: str | os.PathLike[str]) -> "WhisperEncoder":
        """Build and load from a CTranslate2 Whisper directory (its ``model.bin``)."""
        w = read_ctranslate2_encoder(Path(model_dir) / "model.bin")
        n_blocks = sum(map(_is_block, w))
        hidden, dim = w["encoder/layer_0/ffn/linear_0/weight"].shape
        n_mels = w["encoder/conv1/weight"].shape[1]
        enc = cls(dim, heads=dim // 64, hidden=hidden, n_blocks=n_blocks, n_mels=n_mels,
                  n_positions=w["encoder/position_encodings/encodings"].shape[0])
        state = {"conv1.weight": w["encoder/conv1/weight"], "conv1.bias": w["encoder/conv1/bias"],
                 "conv2.weight": w["encoder/conv2/weight"], "conv2.bias": w["encoder/conv2/bias"],
                 "positions": w["encoder/position_encodings/encodings"],
                 "norm.weight": w["encoder/layer_norm/gamma"], "norm.bias": w["encoder/layer_norm/beta"]}
        for i in range(n_blocks):
            p, q = f"encoder/layer_{i}/", f"blocks.{i}."
            for ours, theirs in (("attn_norm", "self_attention/layer_norm"), ("mlp_norm", "ffn/layer_norm")):
                state[q + ours + ".weight"], state[q + ours + ".bias"] = w[p + theirs + "/gamma"], w[p + theirs + "/beta"]
            for ours, theirs in (("attn.qkv", "self_attention/linear_0"), ("attn.out", "self_attention/linear_1"),
                                 ("mlp.0", "ffn/linear_0"), ("mlp.2", "ffn/linear_1")):
                state[q + ours + ".weight"], state[q + ours + ".bias"] = w[p + theirs + "/weight"], w[p + theirs + "/bias"]
        enc.load_state_dict(state)
        return enc.eval()


def count_blocks(model_dir: str | os.PathLike[str]) -> int:
    """Encoder blocks of a CTranslate2 Whisper model, from variable names only (no weights read)."""
    path = Path(model_dir) / "model.bin"
    with open(path, "rb") as f:
        return sum(_is_block(name) for name, *_ in _variables(f, path))


__all__ = ["WhisperEncoder", "read_ctranslate2_encoder", "count_blocks"]
