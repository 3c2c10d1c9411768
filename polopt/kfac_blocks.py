"""The per-parameter-group state of the K-FAC optimizer (polopt.kfac).

A :class:`LinearBlock` holds one Linear layer's Kronecker factors and their damped inverses; a
:class:`DiagonalBlock` is a parameter whose exact Fisher block is a known constant times the
identity. Both keep a momentum buffer and know how to split a direction into per-parameter parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


class DampedInverse(NamedTuple):
    """(A + c_A I)⁻¹, (G + c_G I)⁻¹, the damped factors themselves, and their condition numbers."""

    a_inverse: Tensor
    g_inverse: Tensor
    a_damped: Tensor
    g_damped: Tensor
    condition: Tensor  # [cond(A + c_A I), cond(G + c_G I)]


@dataclass
class LinearBlock:
    """K-FAC state of one Linear layer; tensors are None until the first update.

    Directions and steps are [out, in + 1] matrices: the weight with the bias as its last column.
    """

    layer: nn.Linear
    a: Tensor | None = None                 # moving average of E[ā āᵀ]
    g: Tensor | None = None                 # moving average of E[g gᵀ]
    inverse: DampedInverse | None = None    # as of the last refresh
    momentum: Tensor | None = None
    recorded: tuple[Tensor, Tensor] | None = field(default=None, repr=False)  # (input, output) of the last forward

    STATE = ("a", "g", "inverse", "momentum")

    @property
    def has_bias(self) -> bool:
        return self.layer.bias is not None

    @property
    def device(self) -> torch.device:
        return self.layer.weight.device

    def parameter_directions(self, direction: Tensor) -> list[tuple[Tensor, Tensor]]:
        if self.layer.bias is None:
            return [(self.layer.weight, direction)]
        return [(self.layer.weight, direction[:, :-1]), (self.layer.bias, direction[:, -1])]


@dataclass
class DiagonalBlock:
    """A parameter whose exact Fisher block is ``fisher`` · I (e.g. a Gaussian's log σ: 2)."""

    param: nn.Parameter
    fisher: float
    momentum: Tensor | None = None

    STATE = ("momentum",)

    @property
    def device(self) -> torch.device:
        return self.param.device

    def parameter_directions(self, direction: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [(self.param, direction)]


Block = LinearBlock | DiagonalBlock


def state_tensors(blocks: list[Block]) -> list[Tensor]:
    """Every stored tensor (factors, inverses, momentum) of the blocks."""
    tensors: list[Tensor] = []
    for block in blocks:
        for name in block.STATE:
            value = getattr(block, name)
            if isinstance(value, tuple):
                tensors.extend(value)
            elif value is not None:
                tensors.append(value)
    return tensors


def clear_state(blocks: list[Block]) -> None:
    for block in blocks:
        for name in block.STATE:
            setattr(block, name, None)


def blocks_state_dict(blocks: list[Block]) -> list[dict[str, Any]]:
    return [{name: getattr(b, name) for name in b.STATE} for b in blocks]


def load_blocks_state_dict(blocks: list[Block], state: list[dict[str, Any]]) -> None:
    """Restores stored tensors onto each block's device (checkpoints are loaded on the CPU)."""
    if len(state) != len(blocks):
        raise ValueError(f"K-FAC state has {len(state)} blocks, this optimizer has {len(blocks)}")
    for block, saved in zip(blocks, state, strict=True):
        for name in block.STATE:
            value = saved[name]
            if isinstance(value, tuple):
                value = DampedInverse(*(t.to(block.device) for t in value))
            elif value is not None:
                value = value.to(block.device)
            setattr(block, name, value)
