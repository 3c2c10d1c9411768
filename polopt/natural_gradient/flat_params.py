"""Views between a list of parameter tensors and one flat vector θ ∈ ℝⁿ."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the natural gradient acts on, by name (the order fixes the flat layout)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenates the tensors, each read in row-major order, into one vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Splits a flat vector into views shaped like `like` (the inverse of :func:`flatten`)."""
    sizes = [t.numel() for t in like]
    if flat.numel() != sum(sizes):
        raise ValueError(f"flat vector has {flat.numel()} elements, the parameters {sum(sizes)}")
    return [chunk.view_as(t) for chunk, t in zip(flat.split(sizes), like, strict=True)]


@torch.no_grad()
def write_flat_(params: Sequence[Tensor], flat: Tensor) -> None:
    """Copies a flat vector into the parameters in place (optimizer state and identities are kept)."""
    for p, value in zip(params, unflatten(flat, params), strict=True):
        p.copy_(value)
