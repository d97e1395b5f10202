"""The generator compiled ahead of time (AOTInductor): compiled once per machine, loaded in milliseconds.

``torch.compile`` traces and loads its code again in every new process (about 9 s here even with
Inductor's disk cache warm: a sixth of a one-minute dub, paid by every ``resync dub`` and every
dubbing actor). AOTInductor instead writes a package (a shared library plus the weights) that a
later process loads in milliseconds. The package is keyed by everything that changes the compiled
code (the generator's configuration, batch, precision, threads, device, torch version) and not by
the weights: each model copies its own weights into the loaded package, so a base model and all its
speaker models share one compile.

Packages are our own build products in a local cache folder, never read from catalog storage
(loading one runs its code).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from models.config import GeneratorConfig
from models.generator import Generator
from models.precision import autocast

PREFIX = "g."  # the generator's parameters inside the exported module


class Synthesis(nn.Module):
    """(mesh, masked target, W+ codes of one reference) -> crops: what inference runs per batch."""

    def __init__(self, generator: Generator, amp: bool) -> None:
        super().__init__()
        self.g, self.amp = generator, amp

    def forward(self, mesh: torch.Tensor, masked_target: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        with autocast(mesh.device, self.amp):
            feats = self.g.guide_encoder(torch.cat([mesh * 2 - 1, masked_target], 1))
            return self.g.synthesize(feats, codes[None]).float()  # one style for all: folded weights


def default_cache_dir() -> Path:
    """``$RESYNC_COMPILE_CACHE``, else the user's cache folder."""
    env = os.environ.get("RESYNC_COMPILE_CACHE")
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(env) if env else base / "resync" / "compiled"


def package_key(cfg: GeneratorConfig, batch: int, amp: bool, device: torch.device) -> str:
    """What the compiled code depends on, hashed (weights excluded: they are swapped in)."""
    doc = {"config": {k: (sorted(v.items()) if isinstance(v, dict) else v) for k, v in cfg.__dict__.items()},
           "batch": batch, "amp": amp, "device": device.type, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "machine": platform.machine(), "format": 1}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """One compile per package at a time across processes (actors start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def compile_package(generator: Generator, batch: int, amp: bool, path: Path) -> None:
    """Export and compile the synthesis for inputs of batch ``batch``; written atomically to ``path``."""
    size, dev = generator.cfg.size, next(generator.parameters()).device
    example = (torch.zeros(batch, 1, size, size, device=dev), torch.zeros(batch, 3, size, size, device=dev),
               torch.zeros(generator.n_latent, generator.cfg.style_dim, device=dev))
    with torch.no_grad():
        program = torch.export.export(Synthesis(generator, amp).eval(), example)
        fd, tmp = tempfile.mkstemp(suffix=".pt2", dir=path.parent)
        os.close(fd)
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class CompiledSynthesis:
    """A loaded package, called as the synthesis is: ``fn(mesh, masked_target, codes) -> crops``.

    It drives the C++ package loader directly. ``torch._inductor.aoti_load_package`` would wrap the
    same loader, but importing it imports Inductor, Dynamo and SymPy (0.7-1 s of every ``resync dub``'s
    start, on the redraw thread while the first chunk waits) only to flatten three tensors and
    unflatten one, which is all this does."""

    def __init__(self, path: Path) -> None:
        self.loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)

    def __call__(self, mesh: torch.Tensor, masked_target: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.loader.boxed_run([mesh, masked_target, codes])[0]

    def get_constant_fqns(self) -> list[str]:
        return self.loader.get_constant_fqns()

    def load_constants(self, constants: dict[str, torch.Tensor], check_full_update: bool) -> None:
        self.loader.load_constants(constants, False, check_full_update, False)


def load_compiled(generator: Generator, batch: int, amp: bool, cache_dir: Path | None = None) -> CompiledSynthesis:
    """The compiled synthesis for ``generator``'s weights: ``fn(mesh, masked_target, codes)`` on
    batches of exactly ``batch``. Compiles on a machine's first use (about 45 s here)."""
    dev = next(generator.parameters()).device
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    path = folder / f"synthesis-{package_key(generator.cfg, batch, amp, dev)}.pt2"
    if not path.is_file():
        with _file_lock(path.with_suffix(".lock")):
            if not path.is_file():
                compile_package(generator, batch, amp, path)
    runner = CompiledSynthesis(path)
    weights = {PREFIX + k: v for k, v in generator.state_dict().items()}
    runner.load_constants({name: weights[name] for name in runner.get_constant_fqns()}, check_full_update=True)
    return runner


__all__ = ["Synthesis", "CompiledSynthesis", "load_compiled", "compile_package", "package_key", "default_cache_dir"]
