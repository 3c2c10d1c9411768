"""Conjugate gradient against torch.linalg.solve on explicit SPD systems (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from polopt.natural_gradient.conjugate_gradient import conjugate_gradient
from polopt.natural_gradient.solvers import ConjugateGradientSolver, DenseSolver


def spd_matrix(n: int, condition: float, generator: torch.Generator, spectrum: str = "uniform",
               distinct: int | None = None) -> torch.Tensor:
    """Q diag(λ) Qᵀ, Q random orthogonal, λ in [1, condition] with both ends present: uniformly
    drawn, log-spaced ("log"), or `distinct` log-spaced values repeated."""
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=generator))
    if spectrum == "uniform":
        eigenvalues = 1.0 + (condition - 1.0) * torch.rand(n, dtype=torch.float64, generator=generator)
        eigenvalues[0], eigenvalues[-1] = 1.0, condition
    else:
        levels = torch.logspace(0.0, math.log10(condition), distinct or n, dtype=torch.float64)
        eigenvalues = levels[torch.arange(n) % levels.numel()]
    return q @ torch.diag(eigenvalues) @ q.T


def relative_residual(a, x, b) -> float:
    return ((a @ x - b).norm() / b.norm()).item()


# Exact arithmetic ends CG in n steps; rounding delays that (Greenbaum 1997, "Iterative Methods for
# Solving Linear Systems", ch. 4). Measured over 40 random spectra in [1, κ], κ ≤ 1e3: n steps always
# suffice for n ≤ 10, while 3–5% of draws need up to 1.16n for n = 20…50; hence a 20% margin there.
# Log-spaced spectra (clusters at both ends, the worst case) are tested with 2n below.
def iteration_budget(n: int) -> int:
    return n if n <= 10 else n + n // 5


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("condition", [10.0, 1e2, 1e3])
@pytest.mark.parametrize("n", [5, 10, 20, 35, 50])
def test_cg_matches_linalg_solve(n, condition, seed):
    generator = torch.Generator().manual_seed(100 * seed + n)
    a = spd_matrix(n, condition, generator)
    b = torch.randn(n, dtype=torch.float64, generator=generator)
    result = conjugate_gradient(lambda v: a @ v, b, max_iters=iteration_budget(n), residual_tol=0.0)
    assert relative_residual(a, result.solution, b) <= 1e-8
    torch.testing.assert_close(result.solution, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("n", [5, 10, 20, 35, 50])
def test_cg_on_log_spaced_spectra_with_condition_1e3_within_2n_iterations(n):
    generator = torch.Generator().manual_seed(n)
    a = spd_matrix(n, 1e3, generator, spectrum="log")
    b = torch.randn(n, dtype=torch.float64, generator=generator)
    result = conjugate_gradient(lambda v: a @ v, b, max_iters=2 * n, residual_tol=0.0)
    assert relative_residual(a, result.solution, b) <= 1e-8
    torch.testing.assert_close(result.solution, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-10)


def test_cg_stops_at_the_tolerance_and_freezes_the_solution():
    generator = torch.Generator().manual_seed(0)
    a = spd_matrix(30, 100.0, generator, spectrum="log", distinct=3)  # CG converges in 3 steps in exact arithmetic
    b = torch.randn(30, dtype=torch.float64, generator=generator)
    calls = []

    def matvec(v):
        calls.append(v)
        return a @ v

    early = conjugate_gradient(matvec, b, max_iters=20, residual_tol=1e-9)
    assert early.iterations.item() < 20
    assert (early.residual_norm / b.norm()).item() <= 1e-9
    assert len(calls) == 20  # the loop keeps its length (no host reads); the extra steps change nothing
    exact_budget = conjugate_gradient(lambda v: a @ v, b, max_iters=int(early.iterations), residual_tol=1e-9)
    assert torch.equal(early.solution, exact_budget.solution)
    torch.testing.assert_close(early.solution, torch.linalg.solve(a, b), rtol=1e-7, atol=1e-9)


def test_cg_residual_norm_is_the_true_residual():
    generator = torch.Generator().manual_seed(1)
    a = spd_matrix(40, 1e3, generator)
    b = torch.randn(40, dtype=torch.float64, generator=generator)
    result = conjugate_gradient(lambda v: a @ v, b, max_iters=8)
    torch.testing.assert_close(result.residual_norm, (b - a @ result.solution).norm(), rtol=1e-6, atol=1e-12)
    assert result.iterations.item() == 8


def test_cg_of_a_zero_right_hand_side_is_zero():
    a = torch.eye(4, dtype=torch.float64)
    result = conjugate_gradient(lambda v: a @ v, torch.zeros(4, dtype=torch.float64), max_iters=5)
    assert torch.equal(result.solution, torch.zeros(4, dtype=torch.float64))
    assert result.iterations.item() == 0


def test_cg_never_reads_a_tensor_back_to_the_host(monkeypatch):
    """No .item()/float()/bool()/tolist() on tensors inside the loop (a sync on a GPU)."""
    a = spd_matrix(12, 50.0, torch.Generator().manual_seed(2))
    b = torch.ones(12, dtype=torch.float64)

    def forbidden(*args, **kwargs):
        raise AssertionError("host read inside conjugate_gradient")

    for name in ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    result = conjugate_gradient(lambda v: a @ v, b, max_iters=12)
    monkeypatch.undo()
    assert ((a @ result.solution - b).norm() / b.norm()).item() <= 1e-8


def test_solvers_agree_on_an_explicit_system():
    generator = torch.Generator().manual_seed(3)
    a = spd_matrix(15, 1e2, generator)
    b = torch.randn(15, dtype=torch.float64, generator=generator)
    cg = ConjugateGradientSolver(max_iters=15, residual_tol=0.0)(lambda v: a @ v, b)
    dense = DenseSolver()(lambda v: a @ v, b)
    expected = torch.linalg.solve(a, b)
    torch.testing.assert_close(cg.direction, expected, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(dense.direction, expected, rtol=1e-10, atol=1e-12)
    assert cg.metrics["update/cg_residual"].item() <= 1e-8
    assert dense.metrics["update/solve_residual"].item() <= 1e-12


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cg_on_cuda_does_not_synchronize():
    generator = torch.Generator().manual_seed(4)
    a = spd_matrix(20, 1e2, generator).cuda()
    b = torch.randn(20, dtype=torch.float64, generator=generator).cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = conjugate_gradient(lambda v: a @ v, b, max_iters=20, residual_tol=1e-12)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(result.solution.cpu(), torch.linalg.solve(a, b).cpu(), rtol=1e-6, atol=1e-9)
