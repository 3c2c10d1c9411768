"""GAE against a plain Python loop; truncation bootstraps from the final observation."""

from __future__ import annotations

import torch

from polopt.advantages import explained_variance, generalized_advantage_estimation, normalize
from polopt.distributions import CategoricalParams
from polopt.rollout import Rollout, rollout_to_batch


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    horizon, num_envs = len(rewards), len(rewards[0])
    adv = [[0.0] * num_envs for _ in range(horizon)]
    for n in range(num_envs):
        running = 0.0
        for t in reversed(range(horizon)):
            bootstrap = 0.0 if terminated[t][n] else gamma * next_values[t][n]
            delta = rewards[t][n] + bootstrap - values[t][n]
            done = terminated[t][n] or truncated[t][n]
            running = delta + (0.0 if done else gamma * lam * running)
            adv[t][n] = running
    return adv


def random_rollout(horizon=40, num_envs=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(horizon, num_envs, generator=g, dtype=torch.float64)
    values = torch.randn(horizon, num_envs, generator=g, dtype=torch.float64)
    next_values = torch.randn(horizon, num_envs, generator=g, dtype=torch.float64)
    ends = torch.rand(horizon, num_envs, generator=g)
    terminated = ends < 0.1
    truncated = (ends >= 0.1) & (ends < 0.2)
    return rewards, values, next_values, terminated, truncated


def test_gae_matches_python_loop_with_mixed_terminations_and_truncations():
    rewards, values, next_values, terminated, truncated = random_rollout()
    assert terminated.any() and truncated.any()
    adv, ret = generalized_advantage_estimation(rewards, values, next_values, terminated, truncated, 0.98, 0.9)
    expected = torch.tensor(reference_gae(rewards.tolist(), values.tolist(), next_values.tolist(),
                                          terminated.tolist(), truncated.tolist(), 0.98, 0.9), dtype=torch.float64)
    torch.testing.assert_close(adv, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(ret, expected + values, atol=1e-10, rtol=0)


def test_gae_over_a_rollout_equals_gae_over_halves_split_at_an_episode_end():
    rewards, values, next_values, terminated, truncated = random_rollout(horizon=30, num_envs=1, seed=3)
    terminated[:] = False
    truncated[:] = False
    terminated[14, 0] = True  # an episode ends at t = 14, so t = 15 starts a new one
    whole, _ = generalized_advantage_estimation(rewards, values, next_values, terminated, truncated, 0.99, 0.95)
    parts = [generalized_advantage_estimation(rewards[s], values[s], next_values[s], terminated[s],
                                              truncated[s], 0.99, 0.95)[0] for s in (slice(0, 15), slice(15, 30))]
    torch.testing.assert_close(whole, torch.cat(parts), atol=1e-12, rtol=0)


def test_lambda_one_gives_discounted_monte_carlo_returns_within_an_episode():
    rewards = torch.ones(5, 1, dtype=torch.float64)
    values = torch.zeros(5, 1, dtype=torch.float64)
    terminated = torch.zeros(5, 1, dtype=torch.bool)
    terminated[-1] = True
    _, ret = generalized_advantage_estimation(rewards, values, values, terminated, torch.zeros_like(terminated),
                                              0.5, 1.0)
    torch.testing.assert_close(ret[:, 0], torch.tensor([1.9375, 1.875, 1.75, 1.5, 1.0], dtype=torch.float64))


class ObsValue(torch.nn.Module):
    """V(s) = 10 · s[0], so targets can be computed by hand."""

    def forward(self, obs):
        return 10.0 * obs[..., 0]


class UniformPolicy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from polopt.distributions import Categorical

        self.distribution = Categorical()

    def forward(self, obs):
        return CategoricalParams(torch.zeros(*obs.shape[:-1], 2, dtype=obs.dtype))


def test_truncated_step_targets_bootstrap_from_final_obs_and_terminated_do_not():
    # One env, three steps: step 0 truncated (final obs 0.7, reset obs 0.2), step 1 terminated, step 2 mid-episode.
    obs = torch.tensor([[[0.1]], [[0.2]], [[0.3]]], dtype=torch.float64)
    next_obs = torch.tensor([[[0.7]], [[0.9]], [[0.5]]], dtype=torch.float64)
    rollout = Rollout(obs=obs, actions=torch.zeros(3, 1, dtype=torch.long),
                      rewards=torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64),
                      terminated=torch.tensor([[False], [True], [False]]),
                      truncated=torch.tensor([[True], [False], [False]]), next_obs=next_obs)
    gamma = 0.9
    batch = rollout_to_batch(rollout, UniformPolicy(), ObsValue(), gamma, 0.0, False, torch.device("cpu"))
    expected = torch.tensor([1.0 + gamma * 7.0, 2.0, 3.0 + gamma * 5.0], dtype=torch.float64)
    torch.testing.assert_close(batch.returns, expected)
    no_bootstrap = rollout_to_batch(rollout, UniformPolicy(), ObsValue(), gamma, 0.0, False, torch.device("cpu"),
                                    bootstrap_truncated=False)
    assert no_bootstrap.returns[0].item() == 1.0


def test_normalize_and_explained_variance():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    n = normalize(x)
    assert abs(n.mean().item()) < 1e-6 and abs(n.std().item() - 1.0) < 1e-6
    assert explained_variance(x, x) == 1.0
    assert abs(explained_variance(torch.zeros(4), x)) < 1e-6


def test_old_params_do_not_move_when_the_policy_is_updated():
    import gymnasium as gym

    from polopt.networks import make_policy

    policy = make_policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2,)))
    rollout = Rollout(obs=torch.zeros(2, 1, 3), actions=torch.zeros(2, 1, 2), rewards=torch.zeros(2, 1),
                      terminated=torch.zeros(2, 1, dtype=torch.bool), truncated=torch.zeros(2, 1, dtype=torch.bool),
                      next_obs=torch.zeros(2, 1, 3))
    value = ObsValue()
    batch = rollout_to_batch(rollout, policy, value, 0.99, 0.95, False, torch.device("cpu"))
    with torch.no_grad():
        policy.log_std.add_(1.0)
    assert torch.equal(batch.old_params.log_std, torch.zeros(2, 2))
