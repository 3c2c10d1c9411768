"""Solvers for the natural-gradient direction s ≈ (F + λI)⁻¹ g, given the Fisher operator."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from polopt.natural_gradient.conjugate_gradient import conjugate_gradient
from polopt.natural_gradient.fisher import FisherOperator


class Solution(NamedTuple):
    """The direction and the solver's diagnostics (tensors, named ``update/...``)."""

    direction: Tensor
    metrics: dict[str, Tensor]


class Solver(Protocol):
    def __call__(self, fisher: FisherOperator, gradient: Tensor) -> Solution: ...


def relative_residual(residual_norm: Tensor, gradient: Tensor) -> Tensor:
    """‖g − (F + λI)s‖ / ‖g‖, 0 for g = 0 (then s = 0 solves it exactly)."""
    norm = gradient.norm()
    return torch.where(norm > 0, residual_norm / torch.where(norm > 0, norm, 1.0), 0.0)


class ConjugateGradientSolver:
    """At most `max_iters` CG iterations from 0 (truncated NPG and TRPO use 10), no host sync."""

    def __init__(self, max_iters: int = 10, residual_tol: float = 1e-10):
        self.max_iters = max_iters
        self.residual_tol = residual_tol

    def __call__(self, fisher: FisherOperator, gradient: Tensor) -> Solution:
        result = conjugate_gradient(fisher, gradient, self.max_iters, self.residual_tol)
        return Solution(result.solution, {
            "update/cg_residual": relative_residual(result.residual_norm, gradient),
            "update/cg_iterations": result.iterations.to(gradient.dtype),
        })


def dense_matrix(fisher: FisherOperator, size: int, like: Tensor) -> Tensor:
    """F + λI built column by column from `size` products (symmetrized against rounding)."""
    eye = torch.eye(size, dtype=like.dtype, device=like.device)
    columns = torch.stack([fisher(e) for e in eye], 1)
    return 0.5 * (columns + columns.T)


class DenseSolver:
    """Exact s = (F + λI)⁻¹ g by torch.linalg.solve on the explicit matrix: n Fisher products and
    O(n³) work, so for small networks only (a check on CG, or NPG with a tiny policy)."""

    def __call__(self, fisher: FisherOperator, gradient: Tensor) -> Solution:
        matrix = dense_matrix(fisher, gradient.numel(), gradient)
        direction = torch.linalg.solve(matrix, gradient)
        residual = (matrix @ direction - gradient).norm()
        return Solution(direction, {"update/solve_residual": relative_residual(residual, gradient)})
