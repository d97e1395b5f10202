"""Motion read-out: a linear map from the Style-SyncFormer's audio tokens to the speaker's face motion.

On the 44 speakers of train/, with speakers held out (five folds, bench/quality's cross-validation),
ridge regression from the same audio tokens followed a held-out speaker's mouth opening better than
the Style-SyncFormer trained on the same footage: with 7 minutes of video a transformer learns the
training speakers, a linear read-out only what the sound says. The read-out knows nothing of the
speaker; the speaker comes from a reference window of their own tracked motion (its mean and spread
per vertex coordinate, as the style code does for the Style-SyncFormer).

How it predicts: tokens are standardised and mapped to ``k`` coefficients of a basis of face motion
(principal components of every training clip's motion standardised by that clip's own mean and
spread); the coefficients are rescaled to the spread they have on the training clips (ridge shrinks
them), so the read-out moves as far as the real faces did; the result, in standard units per
coordinate, is put into the speaker's units by the reference's mean and spread.
"""

from __future__ import annotations

import torch
from torch import nn


class MotionReadout(nn.Module):
    """(T, token_dim) tokens + (Tr, V, 3) reference motion -> (T, V, 3) displacements."""

    def __init__(self, token_dim: int, components: int, n_vertices: int) -> None:
        super().__init__()
        self.register_buffer("token_mean", torch.zeros(token_dim))
        self.register_buffer("token_std", torch.ones(token_dim))
        self.register_buffer("weight", torch.zeros(token_dim, components))
        self.register_buffer("scale", torch.ones(components))        # training spread / predicted spread
        self.register_buffer("bias", torch.zeros(components))
        self.register_buffer("basis", torch.zeros(components, n_vertices * 3))

    @property
    def components(self) -> int:
        return self.basis.shape[0]

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "MotionReadout":
        """An empty read-out shaped like ``state`` (its own ``state_dict``) and loaded with it."""
        k, v3 = state["basis"].shape
        model = cls(state["weight"].shape[0], k, v3 // 3)
        model.load_state_dict(state, strict=True)
        return model

    def standard_motion(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, token_dim) -> (T, V * 3) motion in standard units of a speaker's own spread."""
        x = (tokens.float() - self.token_mean) / self.token_std
        return (x @ self.weight * self.scale + self.bias) @ self.basis

    def forward(self, tokens: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        mean, std = reference_spread(reference)
        z = self.standard_motion(tokens).reshape(len(tokens), *mean.shape)
        return mean + std * z


def reference_spread(motion: torch.Tensor, floor: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, V, 3) -> (V, 3) mean and () spread (root mean square over every coordinate of its motion
    about that mean): where this speaker's face sits and how far it moves. One spread for the face,
    not one per coordinate: a coordinate that hardly moves would make its jitter as loud as the lips."""
    m = motion.double()
    mean = m.mean(0)
    return mean.float(), (m - mean).pow(2).mean().sqrt().clamp_min(floor).float()


@torch.no_grad()
def fit_readout(tokens: list[torch.Tensor], motion: list[torch.Tensor], components: int = 16,
                penalty: float = 1.0, vertex_weights: torch.Tensor | None = None) -> MotionReadout:
    """Ridge regression from each clip's tokens (T, token_dim) to its motion (T, V, 3), in closed form.

    Every clip's motion is put in its own standard units first (the speaker is the reference's job).
    The basis is chosen by ``vertex_weights`` (V,) (default: every vertex alike): the directions that
    explain most of the weighted vertices' motion, so that a mouth is not outvoted by the rest of a
    face; every vertex then follows those directions as it did on the training frames. ``penalty``
    is per training row, so its strength does not fade as footage grows."""
    if not tokens or len(tokens) != len(motion):
        raise ValueError("fit_readout needs one motion sequence per token sequence, and at least one")
    z = []
    for m in motion:
        mean, spread = reference_spread(m)
        z.append(((m.float() - mean) / spread).reshape(len(m), -1).double())
    z_all = torch.cat(z)
    x_all = torch.cat([t.double() for t in tokens])
    if len(x_all) != len(z_all):
        raise ValueError("tokens and motion differ in length")
    n_vertices = z_all.shape[1] // 3
    w = torch.ones(n_vertices, dtype=torch.float64) if vertex_weights is None else vertex_weights.double()
    zw = z_all * w.repeat_interleave(3).sqrt()
    eigvals, eigvecs = torch.linalg.eigh(zw.T @ zw / len(zw))
    directions = eigvecs[:, torch.argsort(eigvals, descending=True)[:components]]   # (V*3, k)
    coef = zw @ directions                                                          # (N, k)
    coef = (coef - coef.mean(0)) / coef.std(0, unbiased=False).clamp_min(1e-9)
    basis = torch.linalg.lstsq(coef, z_all).solution                               # (k, V*3): every vertex
    t_mean, t_std = x_all.mean(0), x_all.std(0, unbiased=False).clamp_min(1e-6)
    xs = (x_all - t_mean) / t_std
    gram = xs.T @ xs + penalty * len(xs) * torch.eye(xs.shape[1], dtype=torch.float64)
    weight = torch.linalg.solve(gram, xs.T @ coef)
    scale = 1.0 / (xs @ weight).std(0, unbiased=False).clamp_min(1e-9)   # coefficients have unit spread
    out = MotionReadout(x_all.shape[1], directions.shape[1], n_vertices)
    out.token_mean.copy_(t_mean)
    out.token_std.copy_(t_std)
    out.weight.copy_(weight)
    out.scale.copy_(scale)
    out.basis.copy_(basis)
    return out


__all__ = ["MotionReadout", "fit_readout", "reference_spread"]
