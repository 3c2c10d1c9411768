"""Step rules: how far to move along the natural-gradient direction s, and whether to accept.

A rule first proposes the scale β of the full step βs (from sᵀFs alone, so the updater can check
the step for non-finite numbers before anything is tried) and then decides the step actually taken:
the fixed rules take the full step, the line search backtracks. They compose: the line search
wraps any proposing rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

# Δ ↦ (L(θ_old + Δ) − L(θ_old), mean KL(π_old‖π_{θ_old+Δ})) on the batch, without touching the weights.
TrialEvaluator = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass
class StepProblem:
    """What a rule may use: s ≈ (F + λI)⁻¹g, sᵀ(F + λI)s and a way to evaluate trial steps."""

    direction: Tensor
    curvature: Tensor
    evaluate: TrialEvaluator


@dataclass
class StepOutcome:
    """The step Δ = scale·s to add to θ_old; Δ = 0 and ``accepted`` False when every trial failed."""

    step: Tensor
    scale: Tensor
    accepted: bool
    backtracks: int


class StepRule(Protocol):
    def propose(self, curvature: Tensor) -> Tensor: ...

    def decide(self, problem: StepProblem, scale: Tensor) -> StepOutcome: ...


def kl_normalized_scale(curvature: Tensor, max_kl: float) -> Tensor:
    """β = √(2δ / sᵀFs), so the quadratic model of the KL of the step βs, ½β² sᵀFs, equals δ
    (Schulman et al. 2015, appendix C). 0 when sᵀFs ≤ 0 (s = 0: nothing to scale)."""
    positive = curvature > 0
    return torch.where(positive, torch.sqrt(2.0 * max_kl / torch.where(positive, curvature, 1.0)), 0.0)


def take_full_step(problem: StepProblem, scale: Tensor) -> StepOutcome:
    return StepOutcome(scale * problem.direction, scale, accepted=True, backtracks=0)


class FixedStep:
    """θ ← θ + α s with a fixed α (Kakade 2001's natural policy gradient)."""

    def __init__(self, step_size: float = 0.1):
        self.step_size = step_size

    def propose(self, curvature: Tensor) -> Tensor:
        return curvature.new_tensor(self.step_size)

    def decide(self, problem: StepProblem, scale: Tensor) -> StepOutcome:
        return take_full_step(problem, scale)


class KLNormalizedStep:
    """θ ← θ + √(2δ / sᵀFs) s: the truncated natural policy gradient step (Duan et al. 2016)."""

    def __init__(self, max_kl: float = 0.01):
        self.max_kl = max_kl

    def propose(self, curvature: Tensor) -> Tensor:
        return kl_normalized_scale(curvature, self.max_kl)

    def decide(self, problem: StepProblem, scale: Tensor) -> StepOutcome:
        return take_full_step(problem, scale)


class BacktrackingLineSearch:
    """TRPO's line search (Schulman et al. 2015): tries β·ratioᵏ for k = 0 … max_iters − 1 and
    takes the first step whose surrogate improves and whose mean KL(π_old‖π_new) ≤ max_kl; if none
    does, the step is 0. Each trial costs one forward pass and one host read of its verdict."""

    def __init__(self, proposal: StepRule, max_kl: float = 0.01, ratio: float = 0.8, max_iters: int = 10):
        self.proposal = proposal
        self.max_kl = max_kl
        self.ratio = ratio
        self.max_iters = max_iters

    def propose(self, curvature: Tensor) -> Tensor:
        return self.proposal.propose(curvature)

    def decide(self, problem: StepProblem, scale: Tensor) -> StepOutcome:
        for k in range(self.max_iters):
            trial_scale = scale * self.ratio**k
            step = trial_scale * problem.direction
            improvement, kl = problem.evaluate(step)
            if bool((improvement > 0) & (kl <= self.max_kl)):
                return StepOutcome(step, trial_scale, accepted=True, backtracks=k)
        return StepOutcome(torch.zeros_like(problem.direction), torch.zeros_like(scale), accepted=False,
                           backtracks=self.max_iters)
