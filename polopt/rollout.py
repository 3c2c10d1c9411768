"""Rollout collection (T steps × N envs, batched inference) and the batch it turns into."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from polopt import env_state
from polopt.advantages import generalized_advantage_estimation, normalize
from polopt.batch import Batch
from polopt.networks import Policy
from polopt.normalization import RewardScaler


class NonFiniteEnvError(RuntimeError):
    """An environment returned a NaN or infinite observation or reward."""


@dataclass
class Rollout:
    """[T, N, ...] CPU tensors. ``next_obs[t]`` is the observation after step t: the episode's final
    observation where it ended at t (not the reset one), otherwise ``obs[t + 1]``."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    next_obs: Tensor


class EpisodeTracker:
    """Undiscounted returns and lengths of finished episodes, from the raw (unscaled) rewards."""

    def __init__(self, num_envs: int, window: int = 100):
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        self.recent: deque[tuple[float, int]] = deque(maxlen=window)
        self.finished: list[tuple[float, int]] = []

    def step(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.returns += rewards
        self.lengths += 1
        for i in np.flatnonzero(dones):
            episode = (float(self.returns[i]), int(self.lengths[i]))
            self.finished.append(episode)
            self.recent.append(episode)
        self.returns[dones] = 0.0
        self.lengths[dones] = 0

    def pop_finished(self) -> list[tuple[float, int]]:
        finished, self.finished = self.finished, []
        return finished


class Collector:
    """Steps all envs together with one batched policy call per step, into preallocated buffers."""

    def __init__(self, envs: gym.vector.VectorEnv, steps_per_env: int, seed: int,
                 reward_scaler: RewardScaler | None = None):
        self.envs = envs
        self.num_envs = envs.num_envs
        self.steps_per_env = steps_per_env
        self.reward_scaler = reward_scaler
        self.episodes = EpisodeTracker(self.num_envs)
        self.action_space = envs.single_action_space
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        if not self.discrete:
            assert isinstance(self.action_space, gym.spaces.Box)
            self._low, self._high = self.action_space.low, self.action_space.high
        self.global_step = 0
        obs_shape = envs.single_observation_space.shape
        assert obs_shape is not None
        shape = (steps_per_env, self.num_envs)
        self._obs = np.zeros((*shape, *obs_shape), dtype=np.float32)
        self._next_obs = np.zeros_like(self._obs)
        act_shape: tuple[int, ...] = () if self.discrete else tuple(self.action_space.shape or ())
        self._actions = np.zeros((*shape, *act_shape), dtype=np.int64 if self.discrete else np.float32)
        self._rewards = np.zeros(shape, dtype=np.float32)
        self._terminated = np.zeros(shape, dtype=bool)
        self._truncated = np.zeros(shape, dtype=bool)
        obs, _ = envs.reset(seed=seed)
        self._check_finite(obs, np.zeros(self.num_envs))
        self.obs = obs.astype(np.float32)  # the current observations; overwritten in place each step

    def _check_finite(self, obs: np.ndarray, rewards: np.ndarray) -> None:
        bad_obs = ~np.isfinite(obs.reshape(self.num_envs, -1)).all(axis=1)
        bad = bad_obs | ~np.isfinite(rewards)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = "observation" if bad_obs[i] else "reward"
            spec = self.envs.spec.id if self.envs.spec else "env"
            raise NonFiniteEnvError(f"{spec}: env index {i} returned a non-finite {what} at global step "
                                    f"{self.global_step} (obs={obs[i]!r}, reward={rewards[i]!r})")

    def _to_env_action(self, actions: np.ndarray) -> np.ndarray:
        # The log-prob sees the sampled action; only what the env receives is clipped to its bounds.
        if self.discrete:
            return actions
        return np.clip(actions, self._low, self._high)

    def _step(self, t: int, actions: np.ndarray) -> None:
        next_obs, rewards, terminated, truncated, info = self.envs.step(self._to_env_action(actions))
        self.global_step += self.num_envs
        self._check_finite(next_obs, rewards)
        dones = terminated | truncated
        self._next_obs[t] = next_obs
        if dones.any():
            for i in np.flatnonzero(dones):
                self._next_obs[t, i] = info["final_obs"][i]
            self._check_finite(self._next_obs[t], rewards)
        self.episodes.step(rewards, dones)
        if self.reward_scaler is not None:
            rewards = self.reward_scaler(rewards, dones)
        self._obs[t] = self.obs
        self._actions[t] = actions
        self._rewards[t] = rewards
        self._terminated[t] = terminated
        self._truncated[t] = truncated
        np.copyto(self.obs, next_obs)  # no per-step allocation; the policy reads it through from_numpy

    @torch.no_grad()
    def collect(self, policy: Policy) -> Rollout:
        """Runs T steps in all N envs with `policy` (which must live on the CPU)."""
        dist = policy.distribution
        for t in range(self.steps_per_env):
            params = policy(torch.from_numpy(self.obs))
            self._step(t, dist.sample(params).numpy())
        buffers = (self._obs, self._actions, self._rewards, self._terminated, self._truncated, self._next_obs)
        return Rollout(*[torch.from_numpy(a.copy()) for a in buffers])

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "obs": self.obs.copy(), "envs": env_state.capture(self.envs),
                "episodes": (self.episodes.returns.copy(), self.episodes.lengths.copy()),
                "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler else None}

    def load_state_dict(self, state: dict) -> bool:
        """Restores counters, scaler and, where the backend allows, the running episodes.

        Returns whether the episodes were restored; if not, the envs keep the fresh episodes they
        were reset to (the learner state is restored either way)."""
        self.global_step = state["global_step"]
        if self.reward_scaler is not None and state["reward_scaler"] is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        if not env_state.restore(self.envs, state["envs"]):
            return False
        np.copyto(self.obs, state["obs"])
        self.episodes.returns, self.episodes.lengths = (a.copy() for a in state["episodes"])
        return True


@torch.no_grad()
def rollout_to_batch(rollout: Rollout, policy: Policy, value: nn.Module, gamma: float, gae_lambda: float,
                     normalize_advantages: bool, device: torch.device, bootstrap_truncated: bool = True) -> Batch:
    """Values, GAE and old distribution parameters for a rollout, flattened to one batch on `device`.

    With ``bootstrap_truncated=False`` a time-limit truncation is treated like a termination (the
    common bug this layer exists to avoid; kept as an option for ablations and tests)."""
    obs = rollout.obs.to(device).flatten(0, 1)
    horizon, num_envs = rollout.rewards.shape
    values = value(obs)
    next_values = value(rollout.next_obs.to(device).flatten(0, 1)).view(horizon, num_envs)
    terminated, truncated = rollout.terminated.to(device), rollout.truncated.to(device)
    if not bootstrap_truncated:
        terminated = terminated | truncated
    advantages, returns = generalized_advantage_estimation(
        rollout.rewards.to(device), values.view(horizon, num_envs), next_values, terminated, truncated,
        gamma, gae_lambda)
    actions = rollout.actions.to(device).flatten(0, 1)
    # Copies: a state-independent log-std comes back as a view of the live parameter, which the
    # update would otherwise move under the "old" distribution.
    params = policy(obs)
    old_params = type(params)(*(t.clone() for t in params))
    advantages = advantages.flatten()
    return Batch(
        obs=obs,
        actions=actions,
        old_params=old_params,
        old_log_prob=policy.distribution.log_prob(old_params, actions),
        advantages=normalize(advantages) if normalize_advantages else advantages,
        returns=returns.flatten(),
        old_values=values,
    )
