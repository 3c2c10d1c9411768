"""The flat batch every updater receives."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor


def chunk_slices(size: int, chunks: int) -> list[slice]:
    """The slices ``torch.arange(size).chunk(chunks)`` would cut: equal parts of ⌈size/chunks⌉, the last shorter."""
    step = -(-size // chunks)
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


def shuffled_minibatches(tensors: Sequence[Tensor], num_minibatches: int,
                         generator: torch.Generator | None = None) -> Iterator[list[Tensor]]:
    """`num_minibatches` disjoint random minibatches of rows shared by `tensors` (one shuffle, then
    contiguous slices: one gather per tensor, not per minibatch)."""
    size = tensors[0].shape[0]
    perm = torch.randperm(size, generator=generator).to(tensors[0].device)
    shuffled = [t[perm] for t in tensors]
    for part in chunk_slices(size, num_minibatches):
        yield [t[part] for t in shuffled]


@dataclass
class Batch:
    """Flat [B, ...] tensors on the update device.

    ``old_params`` are the distribution parameters the actions were sampled with (a GaussianParams
    or CategoricalParams tuple), so KL(π_old‖π) and the Fisher are analytic.
    """

    obs: Tensor
    actions: Tensor
    old_params: Any
    old_log_prob: Tensor
    advantages: Tensor
    returns: Tensor
    old_values: Tensor

    def __len__(self) -> int:
        return self.obs.shape[0]

    def _map(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = type(value)(*(fn(t) for t in value)) if isinstance(value, tuple) else fn(value)
        return Batch(**out)

    def to(self, device: torch.device | str) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def index(self, idx: Tensor | slice) -> Batch:
        return self._map(lambda t: t[idx])

    def minibatches(self, num_minibatches: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Yields `num_minibatches` disjoint random minibatches covering the batch once (one shuffle,
        then contiguous slices: one gather per field per call, not per minibatch)."""
        perm = torch.randperm(len(self), generator=generator).to(self.obs.device)
        shuffled = self.index(perm)
        for part in chunk_slices(len(self), num_minibatches):
            yield shuffled.index(part)
