"""Checkpoints: safetensors weights + a JSON config, versioned by content hash.

Never pickle: weights load through safetensors, which reads tensors and nothing else, so a
checkpoint from an untrusted place cannot run code. A file that is not safetensors (for example a
``torch.save`` pickle) is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed or not safetensors."""


def state_version(tensors: dict[str, torch.Tensor], config: dict) -> str:
    """Content hash of weights and config: equal models have equal versions, whoever trained them."""
    # Hash the config as JSON stores it (int dict keys become strings), so save and load agree.
    h = hashlib.sha256(json.dumps(json.loads(json.dumps(config)), sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def save_checkpoint(folder: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict,
                    metadata: dict | None = None) -> str:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` atomically; returns the version."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    version = state_version(tensors, config)
    doc = {"version": version, "config": config, "metadata": metadata or {}}
    for name, write in ((WEIGHTS, lambda p: save_file(tensors, p, metadata={"version": version})),
                        (CONFIG, lambda p: Path(p).write_text(json.dumps(doc, indent=2, sort_keys=True)))):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, folder / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return version


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, str]:
    """(tensors, config document, version); refuses anything that is not a safetensors checkpoint."""
    folder = Path(folder)
    weights, config = folder / WEIGHTS, folder / CONFIG
    if not weights.is_file() or not config.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: it needs {WEIGHTS} and {CONFIG}")
    with open(weights, "rb") as f:
        head = f.read(16)
    # safetensors opens with its header's length (8 bytes, little-endian) and then the JSON header;
    # a length whose low byte is 0x80 is not a pickle's opcode, so the header's "{" decides
    if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"):
        raise CheckpointError(f"{weights} is a pickle/torch.save file; only safetensors weights are loaded")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a valid safetensors file: {e}") from e
    doc = json.loads(config.read_text())
    version = state_version(tensors, doc["config"])
    if doc.get("version") != version:
        raise CheckpointError(f"{folder}: weights do not match the recorded version {doc.get('version')} (got {version})")
    return tensors, doc, version
