"""Checks that keep non-finite numbers out of the weights."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


class NonFiniteError(RuntimeError):
    """A loss, gradient, step or statistic was NaN or infinite."""


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """True when every element of every tensor is finite (one host sync for the whole set)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def nonfinite_flag(tensors: Sequence[Tensor]) -> Tensor:
    """1.0 if any element of `tensors` is NaN or ±inf, else 0.0: a 0-dim float tensor, so a step can be
    skipped on the device without a host sync (see polopt.optim.GuardedAdam).

    It uses GradScaler's foreach check with a scale of 1, which leaves the values as they are but
    counts as an in-place write: use it on gradients and losses after ``backward``, not on tensors a
    pending backward still needs."""
    flag = torch.zeros((), device=tensors[0].device)
    torch._amp_foreach_non_finite_check_and_unscale_([t.detach() for t in tensors], flag,
                                                     torch.ones((), device=flag.device))
    return flag
