"""The importance-sampled surrogate objective of a batch, and its KL, at any parameter vector."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from polopt.batch import Batch
from polopt.natural_gradient.flat_params import flatten, unflatten
from polopt.networks import Policy


def surrogate_objective(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor) -> Tensor:
    """L(θ) = mean_b[ π_θ(a_b|s_b) / π_old(a_b|s_b) · Â_b ] (Kakade & Langford 2002; Schulman et al.
    2015, eq. 14). At θ = θ_old its value is mean(Â) and its gradient the policy gradient."""
    return (torch.exp(log_prob - old_log_prob) * advantages).mean()


class BatchSurrogate:
    """L(θ) and the mean KL in both directions on one batch.

    Trial parameters θ_old + Δ are evaluated with torch.func.functional_call, so trying a step never
    writes the policy's weights: a rejected step leaves them bitwise unchanged.
    """

    def __init__(self, policy: Policy, params: dict[str, nn.Parameter], batch: Batch):
        self.policy = policy
        self.names = list(params)
        self.params = list(params.values())
        self.batch = batch
        self.theta_old = flatten(self.params).detach()

    def objective(self) -> Tensor:
        """L at the policy's current parameters, differentiable."""
        new_params = self.policy(self.batch.obs)
        log_prob = self.policy.distribution.log_prob(new_params, self.batch.actions)
        return surrogate_objective(log_prob, self.batch.old_log_prob, self.batch.advantages)

    @torch.no_grad()
    def evaluate(self, theta: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(L, mean KL(π_old‖π), mean KL(π‖π_old)) at flat θ, or at the current weights for None."""
        if theta is None:
            new_params = self.policy(self.batch.obs)
        else:
            values = dict(zip(self.names, unflatten(theta, self.params), strict=True))
            new_params = functional_call(self.policy, values, (self.batch.obs,))
        dist, old_params = self.policy.distribution, self.batch.old_params
        log_prob = dist.log_prob(new_params, self.batch.actions)
        objective = surrogate_objective(log_prob, self.batch.old_log_prob, self.batch.advantages)
        return objective, dist.kl(old_params, new_params).mean(), dist.kl(new_params, old_params).mean()
