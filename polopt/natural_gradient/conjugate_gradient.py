"""Conjugate gradient for A x = b with A symmetric positive definite, given only v ↦ A v."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor


class CGResult(NamedTuple):
    """``residual_norm`` is ‖b − A x‖ as tracked by the recurrence; ``iterations`` counts the
    iterations that changed x (fewer than the budget when the tolerance was met)."""

    solution: Tensor
    residual_norm: Tensor
    iterations: Tensor


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, max_iters: int,
                       residual_tol: float = 1e-10) -> CGResult:
    """Hestenes & Stiefel (1952) CG from x₀ = 0, as used for the natural gradient by Schulman et al.
    (2015, appendix C):

        α = rᵀr / pᵀAp,   x ← x + αp,   r ← r − αAp,   p ← r + (r'ᵀr' / rᵀr) p.

    Runs `max_iters` iterations and freezes x, r and p once ‖r‖ ≤ residual_tol·‖b‖ (or once pᵀAp ≤ 0,
    where A is not positive definite along p). Convergence masks the update with torch.where instead
    of breaking the loop, so the loop never reads a device value back to the host; the products
    after convergence are wasted work, never a change to x.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    threshold = residual_tol**2 * rr
    iterations = torch.zeros((), dtype=torch.long, device=b.device)
    for _ in range(max_iters):
        ap = matvec(p)
        pap = p @ ap
        active = (rr > threshold) & (pap > 0)
        alpha = torch.where(active, rr / torch.where(active, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        rr_next = r @ r
        beta = rr_next / torch.where(active, rr, 1.0)
        p = torch.where(active, r + beta * p, p)
        rr = torch.where(active, rr_next, rr)
        iterations = iterations + active.long()
    return CGResult(x, rr.sqrt(), iterations)
