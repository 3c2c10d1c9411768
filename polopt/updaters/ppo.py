"""Proximal policy optimization (Schulman et al. 2017): clipped surrogate and adaptive KL penalty.

Both variants share one first-order engine (:class:`PPO`): E epochs of Adam over M minibatches of the
batch every updater sees, an optional entropy bonus, a global gradient-norm clip, optional early stop
on the KL and optional linear learning-rate decay. They differ only in the objective object they are
given, so the two can be compared with everything else fixed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from polopt.batch import Batch
from polopt.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, ValueFitterConfig
from polopt.guards import nonfinite_flag
from polopt.networks import Policy
from polopt.optim import GuardedAdam, clip_grad_norm
from polopt.updaters.base import ValueFitterFactory
from polopt.updaters.ppo_losses import (
    AdaptiveKLPenalty,
    ClippedObjective,
    Objective,
    approximate_kl,
    linear_decay,
    probability_ratio,
)

VALUE_TRAINING = ("joint", "fitter")


class LossTerms(NamedTuple):
    """One minibatch's loss pieces (``value`` is None when a separate fitter trains the critic)."""

    policy: Tensor
    value: Tensor | None
    entropy: Tensor
    ratio: Tensor
    kl: Tensor | None  # per-sample KL(π_old‖π), computed only when the objective or target_kl reads it


class MeanTracker:
    """Means of scalar tensors over the steps kept, summed on their device; one host sync when read."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.sums: Tensor | None = None
        self.count: Tensor | None = None

    def add(self, values: dict[str, Tensor], keep: Tensor | None = None) -> None:
        """`keep` (0-dim, 1 or 0) weights this step; a dropped step's values (possibly NaN) add nothing."""
        stacked = torch.stack([value.detach().float() for value in values.values()])
        weight = torch.ones((), device=stacked.device) if keep is None else keep
        if keep is not None:
            stacked = torch.where(keep > 0, stacked, 0.0)
        if self.sums is None or self.count is None:
            self.names, self.sums, self.count = list(values), stacked, weight
        else:
            self.sums, self.count = self.sums + stacked, self.count + weight

    def means(self) -> dict[str, float]:
        if self.sums is None or self.count is None:
            return {}
        *sums, count = torch.cat([self.sums, self.count.reshape(1)]).tolist()
        return dict(zip(self.names, (s / count for s in sums), strict=True)) if count else {}


def unique_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        seen.update((id(p), p) for p in module.parameters() if p.requires_grad)
    return list(seen.values())


class PPO:
    """E epochs × M minibatches of Adam on the objective's loss − c_H·entropy (+ c_V·value loss).

    ``value_training="joint"`` adds the shared fitter's (optionally clipped) value loss to the
    policy loss and steps both networks with one optimizer and one gradient clip, as the reference
    implementation does; ``"fitter"`` trains the policy alone and then calls the value fitter.
    ``target_kl`` stops the epochs once an epoch's mean analytic KL exceeds it. With ``anneal_lr``
    the learning rate decays linearly to 0 over ``anneal_steps`` environment steps. ``compile``
    runs each minibatch's loss (and so its backward) through torch.compile.
    """

    def __init__(self, policy: Policy, value: nn.Module, value_fitter: ValueFitterFactory, objective: Objective,
                 lr: float = 3e-4, epochs: int = 10, minibatches: int = 32, max_grad_norm: float | None = 0.5,
                 entropy_coef: float = 0.0, value_training: str = "joint", value_coef: float = 0.5,
                 target_kl: float | None = None, anneal_lr: bool = False, anneal_steps: int | None = None,
                 compile: bool = False):
        if value_training not in VALUE_TRAINING:
            raise ValueError(f"value_training must be one of {VALUE_TRAINING}, got {value_training!r}")
        if anneal_lr and not anneal_steps:
            raise ValueError("anneal_lr needs anneal_steps (the run's total environment steps)")
        self.policy = policy
        self.value = value
        self.value_fitter = value_fitter(value)
        self.objective = objective
        self.joint = value_training == "joint"
        self.params = unique_parameters([policy, value] if self.joint else [policy])
        self.lr = lr
        self.optimizer = GuardedAdam(self.params, lr)
        self.epochs = epochs
        self.minibatches = minibatches
        self.max_grad_norm = max_grad_norm
        self.entropy_coef = entropy_coef
        self.value_coef = value_coef
        self.target_kl = target_kl
        self.anneal_steps = anneal_steps if anneal_lr else None
        self.steps_seen = 0  # environment steps of the batches updated on so far (drives the decay)
        # torch.compile turns each minibatch's forward and backward into generated kernels (measured in
        # scripts/bench_compile.py); the first minibatch of each size pays the compilation.
        self.minibatch_loss = torch.compile(self._minibatch_loss, dynamic=False) if compile else self._minibatch_loss

    def loss_terms(self, batch: Batch) -> LossTerms:
        dist = self.policy.distribution
        params = self.policy(batch.obs)
        log_prob = dist.log_prob(params, batch.actions)
        ratio = probability_ratio(log_prob, batch.old_log_prob)
        kl = dist.kl(batch.old_params, params) if self.objective.uses_kl or self.target_kl is not None else None
        value_loss = self.value_fitter.loss(batch.obs, batch.returns, batch.old_values) if self.joint else None
        return LossTerms(self.objective.loss(ratio, batch.advantages, kl), value_loss,
                         dist.entropy(params).mean(), ratio, kl)

    def _minibatch_loss(self, minibatch: Batch) -> tuple[Tensor, LossTerms]:
        terms = self.loss_terms(minibatch)
        return self.total_loss(terms), terms

    def total_loss(self, terms: LossTerms) -> Tensor:
        loss = terms.policy - self.entropy_coef * terms.entropy
        return loss if terms.value is None else loss + self.value_coef * terms.value

    def current_lr(self) -> float:
        if self.anneal_steps is None:
            return self.lr
        return linear_decay(self.lr, self.steps_seen, self.anneal_steps)

    def update(self, batch: Batch) -> dict[str, float]:
        start = time.perf_counter()
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        metrics = self._optimize(batch)
        metrics.update(self._after_epochs(batch))
        metrics["update/lr"] = lr
        self.steps_seen += len(batch)
        metrics["time/policy_update_s"] = time.perf_counter() - start  # joint mode: includes the critic
        if not self.joint:
            value_start = time.perf_counter()
            metrics.update(self.value_fitter.fit(batch.obs, batch.returns, batch.old_values))
            metrics["time/value_update_s"] = time.perf_counter() - value_start
        return metrics

    def _optimize(self, batch: Batch) -> dict[str, float]:
        """The epochs. Statistics are each minibatch's before its step (skipped steps excluded);
        ``update/policy_loss`` is the objective's loss (for the penalty variant, including β·KL).
        A step with a non-finite loss or gradient is skipped on the device (no host sync per step)."""
        stats = MeanTracker()
        epochs_run = 0
        for _ in range(self.epochs):
            epoch_kl = MeanTracker()
            for minibatch in batch.minibatches(self.minibatches):
                loss, terms = self.minibatch_loss(minibatch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = clip_grad_norm(self.optimizer.grads(), self.max_grad_norm)
                skip = nonfinite_flag([loss, grad_norm])
                self.optimizer.guarded_step(skip)
                keep = 1.0 - skip
                stats.add({"update/policy_loss": terms.policy, "update/grad_norm": grad_norm,
                           **self.objective.step_stats(terms.ratio)}, keep)
                if terms.kl is not None and self.target_kl is not None:
                    epoch_kl.add({"kl": terms.kl.mean()}, keep)
            epochs_run += 1
            if self.target_kl is not None and epoch_kl.means().get("kl", 0.0) > self.target_kl:
                break
        self.optimizer.zero_grad(set_to_none=True)
        skipped = float(self.optimizer.take_skipped())
        return {**stats.means(), "update/epochs": float(epochs_run), "update/skipped_steps": skipped}

    @torch.no_grad()
    def _after_epochs(self, batch: Batch) -> dict[str, float]:
        """Full-batch diagnostics after the epochs; the objective adapts (β) on the analytic KL here."""
        dist = self.policy.distribution
        params = self.policy(batch.obs)
        log_prob = dist.log_prob(params, batch.actions)
        ratio = probability_ratio(log_prob, batch.old_log_prob)
        log_ratio = log_prob - batch.old_log_prob
        values = {"update/ratio_mean": ratio.mean(), "update/ratio_max": ratio.max(),
                  "update/approx_kl": approximate_kl(log_ratio), "kl": dist.kl(batch.old_params, params).mean()}
        if self.joint:
            values["update/value_loss"] = 0.5 * (self.value(batch.obs) - batch.returns).pow(2).mean()
        names = list(values)
        metrics = dict(zip(names, torch.stack([values[n].float() for n in names]).tolist(), strict=True))
        metrics.update(self.objective.end_update(metrics.pop("kl")))
        return metrics

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "value_fitter": self.value_fitter.state_dict(),
                "objective": self.objective.state_dict(), "steps_seen": self.steps_seen}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.value_fitter.load_state_dict(state["value_fitter"])
        self.objective.load_state_dict(state["objective"])
        self.steps_seen = int(state["steps_seen"])


def ppo_clip(policy: Policy, value: nn.Module, value_fitter: ValueFitterFactory, clip_range: float = 0.2,
             **options: Any) -> PPO:
    """Clipped PPO; `options` are :class:`PPO`'s keyword arguments."""
    return PPO(policy, value, value_fitter, ClippedObjective(clip_range), **options)


def ppo_kl(policy: Policy, value: nn.Module, value_fitter: ValueFitterFactory, kl_target: float = 0.01,
           beta_init: float = 1.0, beta_increase_above: float = 1.5, beta_decrease_below: float | None = None,
           beta_factor: float = 2.0, beta_min: float = 1e-4, beta_max: float = 1e4, **options: Any) -> PPO:
    """KL-penalty PPO with adaptive β; `options` are :class:`PPO`'s keyword arguments."""
    penalty = AdaptiveKLPenalty(kl_target, beta_init, beta_increase_above, beta_decrease_below, beta_factor,
                                beta_min, beta_max)
    return PPO(policy, value, value_fitter, penalty, **options)


@dataclass
class PPOConfig:
    """Fields shared by both variants (see :class:`PPO`)."""

    lr: float = 3e-4
    epochs: int = 10
    minibatches: int = 32
    max_grad_norm: float | None = 0.5
    entropy_coef: float = 0.0
    value_training: str = "joint"
    value_coef: float = 0.5
    target_kl: float | None = None
    anneal_lr: bool = True
    anneal_steps: int | None = "${total_steps}"  # type: ignore[assignment]
    compile: bool = False
    value_fitter: ValueFitterConfig = field(default_factory=ValueFitterConfig)
    ranges: ClassVar[dict[str, Range]] = {"lr": NON_NEGATIVE, "epochs": AT_LEAST_ONE,
                                          "minibatches": AT_LEAST_ONE, "max_grad_norm": POSITIVE,
                                          "entropy_coef": NON_NEGATIVE, "value_coef": NON_NEGATIVE,
                                          "target_kl": POSITIVE, "anneal_steps": AT_LEAST_ONE}
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"value_training": VALUE_TRAINING}


@dataclass
class PPOClipConfig(PPOConfig):
    _target_: str = "polopt.updaters.ppo.ppo_clip"
    clip_range: float = 0.2
    ranges: ClassVar[dict[str, Range]] = {**PPOConfig.ranges, "clip_range": POSITIVE}


@dataclass
class PPOKLConfig(PPOConfig):
    _target_: str = "polopt.updaters.ppo.ppo_kl"
    kl_target: float = 0.01
    beta_init: float = 1.0
    beta_increase_above: float = 1.5
    beta_decrease_below: float | None = None
    beta_factor: float = 2.0
    beta_min: float = 1e-4
    beta_max: float = 1e4
    ranges: ClassVar[dict[str, Range]] = {
        **PPOConfig.ranges, "kl_target": POSITIVE, "beta_init": POSITIVE, "beta_increase_above": POSITIVE,
        "beta_decrease_below": POSITIVE, "beta_factor": Range(1.0, open_low=True), "beta_min": POSITIVE,
        "beta_max": POSITIVE}


SCHEMAS = {"ppo_clip": PPOClipConfig, "ppo_kl": PPOKLConfig}
