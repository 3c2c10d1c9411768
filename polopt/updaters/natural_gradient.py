"""One natural-gradient updater; NPG, truncated NPG and TRPO are configurations of it.

Per batch: g = ∇L(θ_old) of the surrogate, a Fisher operator v ↦ (F + λI)v bound to the batch, a
solver for s ≈ (F + λI)⁻¹g, and a step rule that scales s and decides the step (Kakade 2001;
Schulman et al. 2015; Duan et al. 2016). The three pieces are injected, built by Hydra from the
``updater/fvp``, ``updater/solver`` and ``updater/step_rule`` config groups.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from polopt.batch import Batch
from polopt.guards import all_finite
from polopt.natural_gradient.config import NaturalGradientConfig, register_piece_options
from polopt.natural_gradient.fisher import FisherBackend
from polopt.natural_gradient.flat_params import flatten, trainable_parameters, write_flat_
from polopt.natural_gradient.solvers import Solver
from polopt.natural_gradient.step_rules import StepOutcome, StepProblem, StepRule
from polopt.natural_gradient.surrogate import BatchSurrogate
from polopt.networks import Policy
from polopt.updaters.base import ValueFitterFactory

# Each option of the updater group names this schema; its pieces come from the groups registered here.
SCHEMAS = {"npg": NaturalGradientConfig, "tnpg": NaturalGradientConfig, "trpo": NaturalGradientConfig}
register_piece_options()


class NaturalGradient:
    """θ ← θ_old + step_rule(s), s ≈ (F + λI)⁻¹∇L, then the shared value fit.

    Metrics (``update/...``): ``policy_loss`` −L(θ_new); ``expected_improvement`` gᵀΔ and
    ``surrogate_improvement`` L(θ_new) − L(θ_old); ``kl_old_new`` / ``kl_new_old``, the mean KL in
    both directions after the step; ``grad_norm`` ‖g‖; ``sFs`` sᵀ(F + λI)s; ``step_size`` β with
    Δ = βs (0 when rejected) and ``step_norm`` ‖Δ‖; ``backtracks`` (trials rejected) and
    ``line_search_accepted``; the solver's ``cg_residual`` ‖g − (F + λI)s‖/‖g‖ and
    ``cg_iterations`` (or ``solve_residual``); ``skipped_steps``, 1 when a non-finite gradient,
    direction, sᵀFs or step left the weights untouched; and the value fitter's metrics.
    """

    def __init__(self, policy: Policy, value: nn.Module, value_fitter: ValueFitterFactory,
                 fvp: FisherBackend, solver: Solver, step_rule: StepRule):
        self.policy = policy
        self.named_params = trainable_parameters(policy)
        self.params = list(self.named_params.values())
        self.fvp = fvp
        self.solver = solver
        self.step_rule = step_rule
        self.value_fitter = value_fitter(value)

    def update(self, batch: Batch) -> dict[str, float]:
        start = time.perf_counter()
        metrics = self.policy_step(batch)
        policy_s = time.perf_counter() - start
        metrics.update(self.value_fitter.fit(batch.obs, batch.returns, batch.old_values))
        metrics["time/policy_update_s"] = policy_s
        metrics["time/value_update_s"] = time.perf_counter() - start - policy_s
        return metrics

    def policy_step(self, batch: Batch) -> dict[str, float]:
        """One natural-gradient step of the policy; returns its diagnostics."""
        surrogate = BatchSurrogate(self.policy, self.named_params, batch)
        objective = surrogate.objective()
        gradient = flatten(torch.autograd.grad(objective, self.params, materialize_grads=True))
        fisher = self.fvp.bind(self.policy, batch.obs, batch.old_params)
        solution = self.solver(fisher, gradient)
        direction = solution.direction.detach()
        curvature = direction @ fisher(direction)
        scale = self.step_rule.propose(curvature)
        checked = [gradient, direction, curvature, scale * direction]
        if not all_finite(checked):  # one host sync: nothing non-finite may reach the weights
            return _skipped_metrics(objective)
        objective_old = objective.detach()

        def trial(step: Tensor) -> tuple[Tensor, Tensor]:
            trial_objective, kl, _ = surrogate.evaluate(surrogate.theta_old + step)
            return trial_objective - objective_old, kl

        outcome = self.step_rule.decide(StepProblem(direction, curvature, trial), scale)
        accepted = torch.as_tensor(outcome.accepted, device=direction.device)  # a bool, or decided on the device
        # A rejection writes θ_old back exactly (θ_old + 0 would turn −0.0 into +0.0).
        write_flat_(self.params, torch.where(accepted, surrogate.theta_old + outcome.step, surrogate.theta_old))
        after = surrogate.evaluate()
        return _step_metrics(objective_old, gradient, curvature, outcome, after, solution.metrics)

    def state_dict(self) -> dict:
        return {"value_fitter": self.value_fitter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.value_fitter.load_state_dict(state["value_fitter"])


def _step_metrics(objective_old: Tensor, gradient: Tensor, curvature: Tensor, outcome: StepOutcome,
                  after: tuple[Tensor, Tensor, Tensor], solver_metrics: dict[str, Tensor]) -> dict[str, float]:
    objective_new, kl_old_new, kl_new_old = after
    values: dict[str, Tensor] = {
        "update/policy_loss": -objective_new,
        "update/surrogate_improvement": objective_new - objective_old,
        "update/expected_improvement": gradient @ outcome.step,
        "update/kl_old_new": kl_old_new,
        "update/kl_new_old": kl_new_old,
        "update/grad_norm": gradient.norm(),
        "update/sFs": curvature,
        "update/step_size": outcome.scale,
        "update/step_norm": outcome.step.norm(),
        "update/backtracks": torch.as_tensor(outcome.backtracks, device=gradient.device),
        "update/line_search_accepted": torch.as_tensor(outcome.accepted, device=gradient.device),
        **solver_metrics,
    }
    floats = torch.stack([v.detach().to(gradient.dtype) for v in values.values()]).tolist()  # one sync
    metrics = dict(zip(values, floats, strict=True))
    metrics["update/skipped_steps"] = 0.0
    return metrics


def _skipped_metrics(objective: Tensor) -> dict[str, float]:
    return {"update/policy_loss": -float(objective.detach()), "update/skipped_steps": 1.0,
            "update/line_search_accepted": 0.0, "update/step_size": 0.0}
