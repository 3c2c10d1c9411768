"""Checks that keep non-finite numbers out of the weights."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class NonFiniteError(RuntimeError):
    """A loss, gradient, step or statistic was NaN or infinite."""


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """True when every element of every tensor is finite (one host sync for the whole set)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True
