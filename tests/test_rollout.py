"""The collector: final observations at episode ends, truncation bootstrapping, non-finite env output."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from polopt.envs import make_vector_env
from polopt.networks import make_policy, make_value
from polopt.rollout import Collector, NonFiniteEnvError, rollout_to_batch
from polopt.trainer import build
from tests.conftest import compose_config


class CounterEnv(gym.Env):
    """Observation = steps taken in the episode; reward 1 per step; optional NaN at a given step."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, nan_at: int | None = None, constant_obs: bool = False):
        self.nan_at = nan_at
        self.constant_obs = constant_obs
        self.t = 0

    def _obs(self):
        return np.array([0.0 if self.constant_obs else self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        obs = self._obs()
        if self.nan_at is not None and self.t == self.nan_at:
            obs[0] = np.nan
        return obs, 1.0, False, False, {}


gym.register("polopt-test/Counter-v0", entry_point=CounterEnv, max_episode_steps=5)


def make_collector(num_envs=2, steps=12, **env_kwargs):
    envs = make_vector_env("polopt-test/Counter-v0", num_envs=num_envs, kwargs=env_kwargs)
    policy = make_policy(envs.single_observation_space, envs.single_action_space, normalize_obs=False)
    return Collector(envs, steps, seed=0), policy


def test_next_obs_at_a_time_limit_is_the_final_observation_not_the_reset_one():
    collector, policy = make_collector()
    rollout = collector.collect(policy)
    counts = rollout.obs[:, 0, 0].tolist()
    assert counts == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert rollout.truncated[:, 0].nonzero().flatten().tolist() == [4, 9]
    assert rollout.next_obs[4, 0, 0].item() == 5.0  # final observation of the episode
    assert rollout.obs[5, 0, 0].item() == 0.0  # the next step starts from the reset observation
    assert not rollout.terminated.any()
    assert collector.global_step == 24


def test_episode_returns_are_tracked_from_raw_rewards():
    collector, policy = make_collector()
    collector.collect(policy)
    finished = collector.episodes.pop_finished()
    assert finished == [(5.0, 5)] * 4


def test_non_finite_observation_names_the_env_index_and_step():
    envs = gym.vector.SyncVectorEnv([lambda: gym.wrappers.TimeLimit(CounterEnv(), 50),
                                     lambda: gym.wrappers.TimeLimit(CounterEnv(nan_at=3), 50)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    policy = make_policy(envs.single_observation_space, envs.single_action_space)
    collector = Collector(envs, 10, seed=0)
    with pytest.raises(NonFiniteEnvError, match=r"env index 1 .*non-finite observation at global step 6"):
        collector.collect(policy)


def test_constant_reward_value_reaches_one_over_one_minus_gamma_only_with_bootstrapping():
    """V(s₀) of a constant-reward env with a time limit is 1/(1−γ) = 50 when truncation bootstraps."""
    values = {}
    for bootstrap in (True, False):
        cfg = compose_config(["updater=vpg", "updater.lr=0", "updater.value_fitter.lr=0.02",
                              "updater.value_fitter.epochs=10", "updater.value_fitter.minibatches=4",
                              "env.id=polopt-test/Counter-v0", "+env.kwargs.constant_obs=true",
                              "env.max_episode_steps=20", "num_envs=2", "steps_per_env=64",
                              "rollout.gamma=0.98", "rollout.scale_rewards=false",
                              f"rollout.bootstrap_truncated={bootstrap}"])
        parts = build(cfg)
        for _ in range(150):
            rollout = parts.collector.collect(parts.policy)
            batch = rollout_to_batch(rollout, parts.policy, parts.value, 0.98, 0.95, True, parts.device,
                                     bootstrap_truncated=bootstrap)
            parts.updater.update(batch)
        values[bootstrap] = parts.value(torch.zeros(1, 1)).item()
    assert abs(values[True] - 50.0) < 1.0
    assert values[False] < 40.0


def test_value_network_shares_the_policy_normalizer():
    space = gym.spaces.Box(-1, 1, (3,))
    policy = make_policy(space, gym.spaces.Box(-1, 1, (2,)))
    value = make_value(space, policy.obs_normalizer)
    policy.obs_normalizer.update(torch.randn(10, 3) * 5)
    assert value.obs_normalizer is policy.obs_normalizer
