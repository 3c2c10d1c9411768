"""Advantage estimation as pure functions over [T, N] rollouts (time first, envs second)."""

from __future__ import annotations

import torch
from torch import Tensor


def generalized_advantage_estimation(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """GAE(γ, λ) (Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE").

    δ_t = r_t + γ (1 − term_t) V'_t − V_t,    A_t = δ_t + γλ (1 − done_t) A_{t+1},

    where V'_t is the value of the observation *after* step t: V(s_{t+1}) inside an episode and
    V(final observation) when the episode ended at t. Bootstrapping is cut only by termination, so a
    time-limit truncation bootstraps from the final observation while done_t = term_t ∨ trunc_t stops
    the advantage recursion at every episode boundary. Returns (advantages, returns = A + V).

    All inputs are [T, N]; the recursion runs backwards over T, vectorized over N.
    """
    not_terminated = 1.0 - terminated.to(values.dtype)
    not_done = 1.0 - torch.logical_or(terminated.bool(), truncated.bool()).to(values.dtype)
    deltas = rewards + gamma * not_terminated * next_values - values
    decay = gamma * lam * not_done
    advantages = torch.empty_like(values)
    running = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        running = deltas[t] + decay[t] * running
        advantages[t] = running
    return advantages, advantages + values


def normalize(x: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / (std + eps) over all elements."""
    return (x - x.mean()) / (x.std() + eps)


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """1 − Var[target − predicted] / Var[target]; nan when the target is constant."""
    var_target = target.var()
    if var_target.item() == 0.0:
        return float("nan")
    return float(1.0 - (target - predicted).var() / var_target)
