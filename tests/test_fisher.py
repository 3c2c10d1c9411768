"""Fisher-vector products against the explicit Hessian of the mean KL at θ_old (float64)."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch
from torch import nn
from torch.func import functional_call

from polopt.distributions import DiagGaussian, GaussianParams
from polopt.natural_gradient.fisher import AnalyticFisher, DirectFisher, subsample_states
from polopt.natural_gradient.flat_params import flatten, trainable_parameters, unflatten
from polopt.networks import make_policy
from polopt.normalization import ObsNormalizer

OBS_DIM = 4
ACTION_SPACES = {"gaussian": gym.spaces.Box(-1.0, 1.0, (2,)), "categorical": gym.spaces.Discrete(3)}
BACKENDS = {
    "analytic": lambda damping, subsample=1.0: AnalyticFisher(damping, subsample),
    "analytic_autograd_only": lambda damping, subsample=1.0: AnalyticFisher(damping, subsample, False),
    "direct": lambda damping, subsample=1.0: DirectFisher(damping, subsample),
}


def small_policy(kind: str, seed: int = 0) -> nn.Module:
    """A 4-5-5 tanh policy with a non-trivial output layer and log-std, in float64."""
    torch.manual_seed(seed)
    policy = make_policy(gym.spaces.Box(-10.0, 10.0, (OBS_DIM,)), ACTION_SPACES[kind], hidden_sizes=(5, 5),
                         last_layer_scale=1.0, normalize_obs=False).double()
    if kind == "gaussian":
        with torch.no_grad():
            policy.log_std.copy_(torch.tensor([-0.3, 0.4]))
    return policy


def states_and_old_params(policy: nn.Module, batch_size: int = 32):
    obs = torch.randn(batch_size, OBS_DIM, dtype=torch.float64)
    with torch.no_grad():  # copies, as the rollout makes them: log-std is a view of the live parameter
        return obs, type(params := policy(obs))(*(t.clone() for t in params))


def mean_kl_of_flat(policy: nn.Module, obs, old_params):
    """θ ↦ mean_s KL(π_old(·|s) ‖ π_θ(·|s)) as a function of the flat parameter vector."""
    params = trainable_parameters(policy)

    def mean_kl(theta):
        values = dict(zip(params, unflatten(theta, list(params.values())), strict=True))
        return policy.distribution.kl(old_params, functional_call(policy, values, (obs,))).mean()

    return mean_kl, flatten(list(params.values())).detach()


def explicit_fisher(policy: nn.Module, obs, old_params) -> torch.Tensor:
    """F as the Hessian of the mean KL at θ_old, by torch.autograd.functional.hessian."""
    mean_kl, theta_old = mean_kl_of_flat(policy, obs, old_params)
    return torch.autograd.functional.hessian(mean_kl, theta_old)


@pytest.mark.parametrize("kind", sorted(ACTION_SPACES))
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_fisher_vector_product_matches_explicit_hessian(kind, backend, damping):
    policy = small_policy(kind)
    obs, old_params = states_and_old_params(policy)
    fisher = explicit_fisher(policy, obs, old_params)
    operator = BACKENDS[backend](damping).bind(policy, obs, old_params)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(fisher.shape[0], dtype=torch.float64, generator=generator)
        torch.testing.assert_close(operator(v), fisher @ v + damping * v, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(ACTION_SPACES))
def test_fisher_is_symmetric_psd_and_kl_is_flat_at_old_params(kind):
    policy = small_policy(kind)
    obs, old_params = states_and_old_params(policy)
    fisher = explicit_fisher(policy, obs, old_params)
    torch.testing.assert_close(fisher, fisher.T, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(fisher).min() >= -1e-10
    mean_kl, theta_old = mean_kl_of_flat(policy, obs, old_params)
    theta = theta_old.clone().requires_grad_(True)
    kl = mean_kl(theta)
    (grad,) = torch.autograd.grad(kl, theta)
    assert abs(kl.item()) < 1e-12
    assert grad.abs().max().item() < 1e-12


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_fisher_on_a_small_batch_of_another_policy(backend):
    policy = small_policy("gaussian", seed=3)
    obs, old_params = states_and_old_params(policy, batch_size=7)
    fisher = explicit_fisher(policy, obs, old_params)
    v = torch.randn(fisher.shape[0], dtype=torch.float64)
    torch.testing.assert_close(BACKENDS[backend](0.0).bind(policy, obs, old_params)(v), fisher @ v,
                               rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("fraction, expected", [(0.25, 16), (0.5, 32), (1.0, 64), (0.001, 1)])
def test_subsample_uses_the_stated_fraction(backend, fraction, expected):
    policy = small_policy("categorical")
    obs, old_params = states_and_old_params(policy, batch_size=64)
    torch.manual_seed(5)
    operator = BACKENDS[backend](0.1, fraction).bind(policy, obs, old_params)
    assert operator.num_samples == expected
    torch.manual_seed(5)  # the same draw: F must be the Fisher of exactly those states
    sub_obs, sub_old = subsample_states(obs, old_params, fraction)
    assert sub_obs.shape[0] == expected
    fisher = explicit_fisher(policy, sub_obs, sub_old)
    v = torch.randn(fisher.shape[0], dtype=torch.float64)
    torch.testing.assert_close(operator(v), fisher @ v + 0.1 * v, rtol=1e-6, atol=1e-12)


def test_subsample_draws_distinct_states():
    obs = torch.arange(100.0).unsqueeze(1)
    params = GaussianParams(obs.clone(), torch.zeros(100, 1))
    sub_obs, sub_params = subsample_states(obs, params, 0.3)
    assert sub_obs.shape == (30, 1)
    assert sub_obs.unique().numel() == 30
    torch.testing.assert_close(sub_params.mean, sub_obs)


def test_rebinding_the_analytic_backend_makes_the_old_operator_stale():
    policy = small_policy("gaussian")
    obs, old_params = states_and_old_params(policy)
    backend = AnalyticFisher(0.1)
    first = backend.bind(policy, obs, old_params)
    second = backend.bind(policy, obs[:16], type(old_params)(*(t[:16] for t in old_params)))
    v = torch.randn(sum(p.numel() for p in policy.parameters()), dtype=torch.float64)
    assert torch.isfinite(second(v)).all()
    with pytest.raises(RuntimeError, match="stale"):
        first(v)


class SharedLayerPolicy(nn.Module):
    """A policy applying one Linear twice: its layer Jacobians cannot be cached, so the analytic
    backend must fall back to the double-backward trick for it."""

    def __init__(self):
        super().__init__()
        self.obs_normalizer = ObsNormalizer((3,), enabled=False)
        self.shared = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)
        self.log_std = nn.Parameter(torch.tensor([0.2, -0.1]))
        self.distribution = DiagGaussian()

    def forward(self, obs):
        hidden = torch.tanh(self.shared(torch.tanh(self.shared(obs))))
        mean = self.head(hidden)
        return GaussianParams(mean, self.log_std.expand_as(mean))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_fisher_with_a_layer_applied_twice(backend):
    torch.manual_seed(2)
    policy = SharedLayerPolicy().double()
    obs = torch.randn(16, 3, dtype=torch.float64)
    with torch.no_grad():
        old_params = policy(obs)
    fisher = explicit_fisher(policy, obs, old_params)
    v = torch.randn(fisher.shape[0], dtype=torch.float64)
    torch.testing.assert_close(BACKENDS[backend](0.0).bind(policy, obs, old_params)(v), fisher @ v,
                               rtol=1e-6, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", sorted(ACTION_SPACES))
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_fisher_vector_product_on_cuda_matches_cpu(kind, backend):
    policy = small_policy(kind)
    obs, old_params = states_and_old_params(policy)
    v = torch.randn(sum(p.numel() for p in policy.parameters()), dtype=torch.float64)
    expected = BACKENDS[backend](0.1).bind(policy, obs, old_params)(v)
    policy = policy.cuda()
    cuda_old = type(old_params)(*(t.cuda() for t in old_params))
    result = BACKENDS[backend](0.1).bind(policy, obs.cuda(), cuda_old)(v.cuda())
    torch.testing.assert_close(result.cpu(), expected, rtol=1e-6, atol=1e-12)
