"""Running statistics: observation normalization (owned by the policy) and reward scaling."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def merge_moments(mean: Tensor, var: Tensor, count: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Chan et al. (1979) parallel update of (mean, population variance, count) with a batch [B, ...]."""
    batch_count = batch.shape[0]
    batch_mean = batch.mean(0)
    batch_var = batch.var(0, unbiased=False)
    total = count + batch_count
    delta = batch_mean - mean
    new_mean = mean + delta * (batch_count / total)
    m2 = var * count + batch_var * batch_count + delta.pow(2) * (count * batch_count / total)
    return new_mean, m2 / total, total


class ObsNormalizer(nn.Module):
    """Normalizes observations with running mean/variance kept as buffers.

    The statistics live in float64 buffers so they are saved with the policy, move with it to a
    device and are used at evaluation. They are updated once per rollout (not per step) so that the
    parameters a rollout was sampled with can be recomputed exactly from the stored observations.
    """

    mean: Tensor
    var: Tensor
    count: Tensor

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8, enabled: bool = True):
        super().__init__()
        self.clip = clip
        self.eps = eps
        self.enabled = enabled
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self._refresh()

    def _refresh(self) -> None:
        # Cached float32 shift/scale: the hot path (one call per env step) does two ops only.
        self._shift = self.mean.float()
        self._scale = torch.rsqrt(self.var + self.eps).float()

    @torch.no_grad()
    def update(self, obs: Tensor) -> None:
        if not self.enabled:
            return
        batch = obs.reshape(-1, *tuple(self.mean.shape)).to(self.mean)
        mean, var, count = merge_moments(self.mean, self.var, self.count, batch)
        self.mean.copy_(mean)
        self.var.copy_(var)
        self.count.copy_(count)
        self._refresh()

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._refresh()
        return out

    def forward(self, obs: Tensor) -> Tensor:
        if not self.enabled:
            return obs
        return ((obs - self._shift) * self._scale).clamp(-self.clip, self.clip)


class RewardScaler:
    """Scales rewards by the running std of the discounted return (as in PPO's reference code).

    Per env, ret ← γ·ret·(1 − done) + r; rewards are divided by sqrt(Var[ret] + eps). Works on numpy
    arrays because it sits on the env side of the collector, one call per step.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        self.gamma = gamma
        self.clip = clip
        self.eps = eps
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.mean = np.zeros((), dtype=np.float64)
        self.var = np.ones((), dtype=np.float64)
        self.count = 0.0

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        self.returns = self.returns * self.gamma + rewards
        self._update(self.returns)
        scaled = rewards / np.sqrt(self.var + self.eps)
        self.returns[dones] = 0.0
        return np.clip(scaled, -self.clip, self.clip)

    def _update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, n = x.mean(), x.var(), x.shape[0]
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def state_dict(self) -> dict:
        return {"returns": self.returns.copy(), "mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.returns = np.array(state["returns"], dtype=np.float64)
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
