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
    accepted: bool | Tensor  # a 0-dim bool tensor when decided without reading anything back
    backtracks: int | Tensor


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
    does, the step is 0.

    ``stop_early`` reads each trial's verdict and stops at the first acceptable one; otherwise every
    trial is evaluated and the first acceptable one picked on the device, with nothing read back (on
    a GPU a read waits for the device; on the CPU it is free). ``None`` picks by the device: stop
    early on the CPU only. Both give the same step.
    """

    def __init__(self, proposal: StepRule, max_kl: float = 0.01, ratio: float = 0.8, max_iters: int = 10,
                 stop_early: bool | None = None):
        self.proposal = proposal
        self.max_kl = max_kl
        self.ratio = ratio
        self.max_iters = max_iters
        self.stop_early = stop_early

    def propose(self, curvature: Tensor) -> Tensor:
        return self.proposal.propose(curvature)

    def decide(self, problem: StepProblem, scale: Tensor) -> StepOutcome:
        stop_early = problem.direction.device.type == "cpu" if self.stop_early is None else self.stop_early
        return self._first_acceptable(problem, scale) if stop_early else self._all_trials(problem, scale)

    def _acceptable(self, problem: StepProblem, step: Tensor) -> Tensor:
        improvement, kl = problem.evaluate(step)
        return (improvement > 0) & (kl <= self.max_kl)

    def _first_acceptable(self, problem: StepProblem, scale: Tensor) -> StepOutcome:
        for k in range(self.max_iters):
            trial_scale = scale * self.ratio**k
            step = trial_scale * problem.direction
            if bool(self._acceptable(problem, step)):
                return StepOutcome(step, trial_scale, accepted=True, backtracks=k)
        return StepOutcome(torch.zeros_like(problem.direction), torch.zeros_like(scale), accepted=False,
                           backtracks=self.max_iters)

    def _all_trials(self, problem: StepProblem, scale: Tensor) -> StepOutcome:
        accepted = torch.zeros((), dtype=torch.bool, device=scale.device)
        chosen = torch.zeros_like(scale)
        backtracks = torch.full((), self.max_iters, device=scale.device)
        for k in range(self.max_iters):
            trial_scale = scale * self.ratio**k
            take = self._acceptable(problem, trial_scale * problem.direction) & ~accepted
            chosen = torch.where(take, trial_scale, chosen)
            backtracks = torch.where(take, k, backtracks)
            accepted = accepted | take
        return StepOutcome(chosen * problem.direction, chosen, accepted=accepted, backtracks=backtracks)
