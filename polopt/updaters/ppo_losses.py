"""PPO's objectives and rules (Schulman et al. 2017, "Proximal Policy Optimization Algorithms";
equation numbers refer to that paper): pure functions, then the two objective objects that bind
them to their hyperparameters (and, for the penalty, to β). Losses are negated objectives."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


def probability_ratio(log_prob: Tensor, old_log_prob: Tensor) -> Tensor:
    """r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t) = exp(log π_θ − log π_old); exactly 1 when they agree."""
    return torch.exp(log_prob - old_log_prob)


def clipped_surrogate_loss(ratio: Tensor, advantages: Tensor, clip_range: float) -> Tensor:
    """−L^CLIP(θ) = −E[min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t)] (eq. 7).

    The minimum removes the incentive to move r_t outside [1 − ε, 1 + ε] in the direction Â_t favours:
    a sample with Â > 0 and r > 1 + ε (or Â < 0 and r < 1 − ε) takes the constant branch and
    contributes no gradient.
    """
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages
    return -torch.minimum(unclipped, clipped).mean()


def kl_penalty_loss(ratio: Tensor, advantages: Tensor, kl: Tensor, beta: float | Tensor) -> Tensor:
    """−L^KLPEN(θ) = −E[r_t Â_t − β KL[π_old(·|s_t), π_θ(·|s_t)]] (eq. 8), KL per sample."""
    return -(ratio * advantages).mean() + beta * kl.mean()


def approximate_kl(log_ratio: Tensor) -> Tensor:
    """Sample estimate of KL(π_old‖π_θ) from actions drawn from π_old: E[(r − 1) − log r].

    Unbiased (E_old[r] = 1) and non-negative per sample, since log r ≤ r − 1 (Schulman 2020,
    "Approximating KL Divergence", estimator k3). ``log_ratio`` is log π_θ − log π_old.
    """
    return (torch.expm1(log_ratio) - log_ratio).mean()


def clip_fraction(ratio: Tensor, clip_range: float) -> Tensor:
    """Fraction of samples whose ratio lies outside [1 − ε, 1 + ε]."""
    return ((ratio - 1.0).abs() > clip_range).float().mean()


def adapt_beta(beta: float, kl: float, kl_target: float, increase_above: float, decrease_below: float,
               factor: float, beta_min: float, beta_max: float) -> float:
    """The adaptive KL coefficient of PPO's penalty variant (section 4), applied once per update:

    KL > increase_above · d_targ → β · factor;  KL < decrease_below · d_targ → β / factor;  else β;

    then clipped to [beta_min, beta_max]. The paper's rule is increase_above = 1.5,
    decrease_below = 1/1.5, factor = 2.
    """
    if kl > increase_above * kl_target:
        beta = beta * factor
    elif kl < decrease_below * kl_target:
        beta = beta / factor
    return min(max(beta, beta_min), beta_max)


def linear_decay(initial: float, done: int, total: int) -> float:
    """initial · (1 − done / total), floored at 0: the learning rate after `done` of `total` steps."""
    return initial * max(1.0 - done / total, 0.0)


class Objective(Protocol):
    """The policy part of PPO's loss, plus what the objective adapts between updates."""

    uses_kl: bool  # whether `loss` reads the per-sample KL (else the caller may pass None)

    def loss(self, ratio: Tensor, advantages: Tensor, kl: Tensor | None) -> Tensor: ...

    def step_stats(self, ratio: Tensor) -> dict[str, Tensor]: ...

    def end_update(self, kl: float) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class ClippedObjective:
    """L^CLIP with clip range ε."""

    uses_kl = False

    def __init__(self, clip_range: float = 0.2):
        self.clip_range = clip_range

    def loss(self, ratio: Tensor, advantages: Tensor, kl: Tensor | None) -> Tensor:
        return clipped_surrogate_loss(ratio, advantages, self.clip_range)

    def step_stats(self, ratio: Tensor) -> dict[str, Tensor]:
        return {"update/clip_fraction": clip_fraction(ratio.detach(), self.clip_range)}

    def end_update(self, kl: float) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class AdaptiveKLPenalty:
    """L^KLPEN with β adapted once per update from the batch's analytic KL after the epochs.

    Thresholds are multiples of ``kl_target``; ``decrease_below=None`` means 1 / increase_above.
    """

    uses_kl = True

    def __init__(self, kl_target: float = 0.01, beta_init: float = 1.0, increase_above: float = 1.5,
                 decrease_below: float | None = None, factor: float = 2.0, beta_min: float = 1e-4,
                 beta_max: float = 1e4):
        decrease_below = 1.0 / increase_above if decrease_below is None else decrease_below
        if not decrease_below < increase_above:
            raise ValueError(f"beta_decrease_below ({decrease_below}) must be below "
                             f"beta_increase_above ({increase_above})")
        if not beta_min <= beta_init <= beta_max:
            raise ValueError(f"beta_init={beta_init} must lie in [beta_min, beta_max] = [{beta_min}, {beta_max}]")
        self.kl_target = kl_target
        self.beta = beta_init
        # β as a 0-dim tensor kept equal to `beta`: a compiled loss reads it as an input, not as a
        # constant, so adapting β does not recompile (a CPU scalar combines with tensors on any device).
        self.beta_tensor = torch.tensor(beta_init, dtype=torch.float32)
        self.increase_above = increase_above
        self.decrease_below = decrease_below
        self.factor = factor
        self.beta_min = beta_min
        self.beta_max = beta_max

    def loss(self, ratio: Tensor, advantages: Tensor, kl: Tensor | None) -> Tensor:
        if kl is None:
            raise ValueError("the KL-penalty objective needs the per-sample KL")
        return kl_penalty_loss(ratio, advantages, kl, self.beta_tensor)

    def step_stats(self, ratio: Tensor) -> dict[str, Tensor]:
        return {}

    def end_update(self, kl: float) -> dict[str, float]:
        self.beta = adapt_beta(self.beta, kl, self.kl_target, self.increase_above, self.decrease_below,
                               self.factor, self.beta_min, self.beta_max)
        self.beta_tensor.fill_(self.beta)
        return {"update/beta": self.beta}

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])
        self.beta_tensor.fill_(self.beta)
