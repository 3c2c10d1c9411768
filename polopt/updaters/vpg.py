"""Vanilla policy gradient (REINFORCE with a learned baseline and GAE advantages)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from polopt.batch import Batch
from polopt.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, ValueFitterConfig
from polopt.guards import nonfinite_flag
from polopt.networks import Policy
from polopt.optim import GuardedAdam, clip_grad_norm
from polopt.updaters.base import ValueFitterFactory


def policy_gradient_loss(log_prob: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """L(θ) = −E[log π_θ(a|s) · Â] (Williams 1992; Â from GAE); its gradient is −ĝ."""
    return -(log_prob * advantages).mean()


class VPG:
    """One Adam step (by default) on the policy-gradient loss per batch, then the value fit."""

    def __init__(self, policy: Policy, value: nn.Module, value_fitter: ValueFitterFactory,
                 lr: float = 3e-4, gradient_steps: int = 1, max_grad_norm: float | None = None):
        self.policy = policy
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = GuardedAdam(self.params, lr)
        self.gradient_steps = gradient_steps
        self.max_grad_norm = max_grad_norm
        self.value_fitter = value_fitter(value)

    def update(self, batch: Batch) -> dict[str, float]:
        start = time.perf_counter()
        dist = self.policy.distribution
        for _ in range(self.gradient_steps):
            log_prob = dist.log_prob(self.policy(batch.obs), batch.actions)
            loss = policy_gradient_loss(log_prob, batch.advantages)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = clip_grad_norm(self.optimizer.grads(), self.max_grad_norm)
            self.optimizer.guarded_step(nonfinite_flag([loss, grad_norm]))  # non-finite: skipped on the device
        loss_value, norm, skipped = torch.stack(
            [loss.detach(), grad_norm, self.optimizer.take_skipped()]).tolist()
        policy_s = time.perf_counter() - start
        metrics = self.value_fitter.fit(batch.obs, batch.returns, batch.old_values)
        metrics.update({
            "update/policy_loss": loss_value,
            "update/grad_norm": norm,
            "update/skipped_steps": skipped,
            "time/policy_update_s": policy_s,
            "time/value_update_s": time.perf_counter() - start - policy_s,
        })
        return metrics

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "value_fitter": self.value_fitter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.value_fitter.load_state_dict(state["value_fitter"])


@dataclass
class VPGConfig:
    _target_: str = "polopt.updaters.vpg.VPG"
    lr: float = 3e-4
    gradient_steps: int = 1
    max_grad_norm: float | None = None
    value_fitter: ValueFitterConfig = field(default_factory=ValueFitterConfig)
    ranges: ClassVar[dict[str, Range]] = {"lr": NON_NEGATIVE, "gradient_steps": AT_LEAST_ONE,
                                          "max_grad_norm": POSITIVE}


SCHEMAS = {"vpg": VPGConfig}
