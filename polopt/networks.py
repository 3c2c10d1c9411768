"""Policy and value networks. Policies return distribution *parameters* (see distributions.py)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import gymnasium as gym
import torch
from torch import Tensor, nn

from polopt.distributions import (
    Categorical,
    CategoricalParams,
    DiagGaussian,
    Distribution,
    GaussianParams,
)
from polopt.normalization import ObsNormalizer

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(sizes: Sequence[int], activation: str, out_gain: float) -> nn.Sequential:
    """Linear layers with `activation` between them, orthogonal init (gain √2; `out_gain` last)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        last = i == len(sizes) - 2
        linear = nn.Linear(n_in, n_out)
        nn.init.orthogonal_(linear.weight, gain=out_gain if last else math.sqrt(2.0))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def flat_obs_dim(space: gym.Space) -> int:
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"only Box observation spaces are supported, got {space}")
    return int(math.prod(space.shape))


class GaussianPolicy(nn.Module):
    """π(a|s) = N(μ_θ(s), diag σ²) with a state-independent learned log σ."""

    def __init__(self, obs_normalizer: ObsNormalizer, obs_dim: int, action_dim: int,
                 hidden_sizes: Sequence[int], activation: str, last_layer_scale: float, log_std_init: float):
        super().__init__()
        self.obs_normalizer = obs_normalizer
        self.body = mlp([obs_dim, *hidden_sizes, action_dim], activation, last_layer_scale)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        self.distribution: Distribution = DiagGaussian()

    def forward(self, obs: Tensor) -> GaussianParams:
        mean = self.body(self.obs_normalizer(obs))
        return GaussianParams(mean, self.log_std.expand_as(mean))


class CategoricalPolicy(nn.Module):
    """π(a|s) = softmax(logits_θ(s))."""

    def __init__(self, obs_normalizer: ObsNormalizer, obs_dim: int, num_actions: int,
                 hidden_sizes: Sequence[int], activation: str, last_layer_scale: float):
        super().__init__()
        self.obs_normalizer = obs_normalizer
        self.body = mlp([obs_dim, *hidden_sizes, num_actions], activation, last_layer_scale)
        self.distribution: Distribution = Categorical()

    def forward(self, obs: Tensor) -> CategoricalParams:
        return CategoricalParams(self.body(self.obs_normalizer(obs)))


Policy = GaussianPolicy | CategoricalPolicy


def make_policy(observation_space: gym.Space, action_space: gym.Space, hidden_sizes: Sequence[int] = (64, 64),
                activation: str = "tanh", last_layer_scale: float = 0.01, log_std_init: float = 0.0,
                normalize_obs: bool = True, obs_clip: float = 10.0) -> Policy:
    """Builds the MLP policy that fits the action space (Box → Gaussian, Discrete → categorical)."""
    obs_dim = flat_obs_dim(observation_space)
    normalizer = ObsNormalizer((obs_dim,), clip=obs_clip, enabled=normalize_obs)
    if isinstance(action_space, gym.spaces.Box):
        return GaussianPolicy(normalizer, obs_dim, int(math.prod(action_space.shape)), hidden_sizes,
                              activation, last_layer_scale, log_std_init)
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalPolicy(normalizer, obs_dim, int(action_space.n), hidden_sizes, activation,
                                 last_layer_scale)
    raise TypeError(f"unsupported action space {action_space}: use Box or Discrete")


class ValueNetwork(nn.Module):
    """V(s) as an MLP on observations normalized by the policy's normalizer (shared, not copied)."""

    def __init__(self, obs_normalizer: ObsNormalizer, obs_dim: int, hidden_sizes: Sequence[int],
                 activation: str):
        super().__init__()
        self.obs_normalizer = obs_normalizer
        self.body = mlp([obs_dim, *hidden_sizes, 1], activation, 1.0)

    def forward(self, obs: Tensor) -> Tensor:
        return self.body(self.obs_normalizer(obs)).squeeze(-1)


def make_value(observation_space: gym.Space, obs_normalizer: ObsNormalizer,
               hidden_sizes: Sequence[int] = (64, 64), activation: str = "tanh") -> ValueNetwork:
    return ValueNetwork(obs_normalizer, flat_obs_dim(observation_space), hidden_sizes, activation)
