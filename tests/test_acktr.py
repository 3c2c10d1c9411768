"""ACKTR updater: config wiring, exact curvature, the log σ block, guards, end-to-end and learning runs."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from polopt.batch import Batch
from polopt.config import ConfigError, validate
from polopt.guards import NonFiniteError
from polopt.kfac import KFAC
from polopt.networks import make_policy, make_value
from polopt.updaters.acktr import (
    ACKTR,
    GAUSSIAN_LOG_STD_FISHER,
    exact_curvature,
    kfac_blocks,
    policy_output_quadratic,
    value_output_quadratic,
)
from tests.conftest import compose_config, final_return

BOX_OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)


def small_actor_critic(action_space: gym.Space, dtype=torch.float64):
    torch.manual_seed(0)
    policy = make_policy(BOX_OBS, action_space, hidden_sizes=(5,), last_layer_scale=0.5).to(dtype)
    value = make_value(BOX_OBS, policy.obs_normalizer, hidden_sizes=(5,)).to(dtype)
    return policy, value


def random_batch(policy, value, size: int = 12, dtype=torch.float64) -> Batch:
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(size, 4, generator=gen, dtype=dtype)
    with torch.no_grad():
        params = policy(obs)
        actions = policy.distribution.sample(params, generator=gen)
        return Batch(obs=obs, actions=actions, old_params=params,
                     old_log_prob=policy.distribution.log_prob(params, actions),
                     advantages=torch.randn(size, generator=gen, dtype=dtype),
                     returns=torch.randn(size, generator=gen, dtype=dtype), old_values=value(obs))


def make_acktr(policy, value, **kwargs) -> ACKTR:
    def factory(**options):
        return lambda layers, diagonal, **kwargs: KFAC(layers, diagonal, **kwargs, **options)

    return ACKTR(policy, value, factory(lr=0.25, kl_clip=1e-3), factory(lr=1.0, kl_clip=None, momentum=0.0,
                                                                         rescale=True), **kwargs)


# --- configuration --------------------------------------------------------------------------------

def test_acktr_option_sets_rollout_shape_and_overrides_still_win():
    cfg = compose_config(["updater=acktr"])
    assert (cfg.num_envs, cfg.steps_per_env) == (16, 20)
    assert cfg.updater.policy_optimizer.lr == 0.25 and cfg.updater.policy_optimizer.kl_clip == 0.001
    validate(cfg)
    cfg = compose_config(["updater=acktr", "num_envs=4", "steps_per_env=7", "updater.policy_optimizer.lr=0.1",
                          "updater.value_iterations=3"])
    assert (cfg.num_envs, cfg.steps_per_env) == (4, 7)
    assert cfg.updater.policy_optimizer.lr == 0.1 and cfg.updater.value_iterations == 3
    assert compose_config(["updater=vpg"]).num_envs == 8  # other updaters keep the global default


@pytest.mark.parametrize("override", ["updater.policy_optimizer.momentum=1.0", "updater.value_optimizer.damping=0",
                                      "updater.policy_optimizer.inv_every=0", "updater.on_nonfinite=ignore",
                                      "updater.policy_curvature=dense"])
def test_out_of_range_options_are_rejected(override: str):
    with pytest.raises(ConfigError):
        validate(compose_config(["updater=acktr", override]))


def test_run_wide_nonfinite_choice_reaches_the_updater():
    assert compose_config(["updater=acktr"]).updater.on_nonfinite == "skip"
    assert compose_config(["updater=acktr", "nonfinite=raise"]).updater.on_nonfinite == "raise"


def test_unknown_option_fails_at_compose_time():
    with pytest.raises(Exception, match=r"policy_optimizer\.learning_rate"):
        compose_config(["updater=acktr", "updater.policy_optimizer.learning_rate=1"])


# --- blocks and curvature -----------------------------------------------------------------------

def test_blocks_cover_every_parameter_and_log_std_gets_the_gaussian_fisher():
    policy, value = small_actor_critic(gym.spaces.Box(-1, 1, (2,), np.float32))
    linear, diagonal = kfac_blocks(policy)
    assert len(linear) == 2 and [b.param for b in diagonal] == [policy.log_std]
    assert diagonal[0].fisher == GAUSSIAN_LOG_STD_FISHER == 2.0
    assert kfac_blocks(value)[1] == []

    class WithExtra(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 2)
            self.scale = nn.Parameter(torch.ones(2))

    with pytest.raises(TypeError, match="scale"):
        kfac_blocks(WithExtra())


def dense_jacobian(module: nn.Module, inputs: torch.Tensor, pick) -> torch.Tensor:
    """∂ vec(output) / ∂ θ for all parameters (flattened in named_parameters order)."""
    names = [n for n, _ in module.named_parameters()]
    shapes = [p.shape for _, p in module.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in module.named_parameters()])

    def out_of(theta: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = theta[offset:offset + math.prod(shape)].reshape(shape)
            offset += math.prod(shape)
        return pick(functional_call(module, params, (inputs,)))

    return torch.autograd.functional.jacobian(out_of, flat)


@pytest.mark.parametrize("space", [gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(3)])
def test_exact_policy_curvature_equals_dense_fisher_quadratic(space: gym.Space):
    """dᵀFd from one JVP = dᵀ (1/N Σ_s J_sᵀ M_s J_s) d with explicit Jacobians and output Fisher M."""
    policy, value = small_actor_critic(space)
    obs = random_batch(policy, value).obs
    directions = [(p, torch.randn_like(p)) for p in policy.parameters()]
    flat_d = torch.cat([d.reshape(-1) for _, d in directions])
    got = exact_curvature(policy, obs, policy_output_quadratic(policy.distribution))(directions)
    params = policy(obs)
    if isinstance(space, gym.spaces.Box):
        jac = dense_jacobian(policy, obs, lambda out: torch.cat([out.mean, out.log_std], -1))
        inv_var = torch.exp(-2 * params.log_std.detach())
        blocks = [torch.diag(torch.cat([inv_var[i], torch.full((2,), 2.0, dtype=obs.dtype)])) for i in range(len(obs))]
    else:
        jac = dense_jacobian(policy, obs, lambda out: out.logits)
        probs = torch.softmax(params.logits.detach(), -1)
        blocks = [torch.diag(p) - torch.outer(p, p) for p in probs]
    per_state = [jac[i].mT @ m @ jac[i] for i, m in enumerate(blocks)]
    dense = sum(per_state) / len(per_state)
    torch.testing.assert_close(got, flat_d @ dense @ flat_d)


def test_exact_value_curvature_is_mean_squared_output_change():
    policy, value = small_actor_critic(gym.spaces.Discrete(2))
    obs = random_batch(policy, value).obs
    directions = [(p, torch.randn_like(p)) for p in value.parameters()]
    flat_d = torch.cat([d.reshape(-1) for _, d in directions])
    jac = dense_jacobian(value, obs, lambda out: out)
    got = exact_curvature(value, obs, value_output_quadratic)(directions)
    torch.testing.assert_close(got, (jac @ flat_d).pow(2).mean())


# --- updates ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("curvature", ["exact", "sampled", "kfac"])
def test_update_keeps_policy_kl_under_the_clip(curvature: str):
    """The predicted KL is at most κ; with the exact curvature it is the KL the step really causes."""
    policy, value = small_actor_critic(gym.spaces.Box(-1, 1, (2,), np.float32))
    batch = random_batch(policy, value, size=64)
    updater = make_acktr(policy, value, policy_curvature=curvature)
    for _ in range(3):
        metrics = updater.update(batch)
        assert metrics["update/kfac_predicted_kl"] <= 1e-3 * (1 + 1e-6)
    with torch.no_grad():
        before = policy(batch.obs)
    metrics = updater.update(batch)
    with torch.no_grad():
        measured = policy.distribution.kl(before, policy(batch.obs)).mean().item()
    if curvature == "exact":  # second-order prediction of the KL the step really causes
        assert measured == pytest.approx(metrics["update/kfac_predicted_kl"], rel=0.05)


def test_value_steps_reduce_the_value_loss():
    policy, value = small_actor_critic(gym.spaces.Discrete(2))
    batch = random_batch(policy, value, size=64)
    with torch.no_grad():
        initial = 0.5 * (value(batch.obs) - batch.returns).pow(2).mean().item()
    updater = make_acktr(policy, value, value_iterations=20)
    updater.update(batch)
    with torch.no_grad():
        final = 0.5 * (value(batch.obs) - batch.returns).pow(2).mean().item()
    assert final < 0.9 * initial


def test_non_finite_factor_skips_the_update_and_counts_it():
    policy, value = small_actor_critic(gym.spaces.Box(-1, 1, (2,), np.float32))
    batch = random_batch(policy, value)
    updater = make_acktr(policy, value, value_iterations=1)
    updater.update(batch)
    updater.policy_kfac.linear[0].g[0, 0] = float("nan")
    updater.value_kfac.linear[1].a[0, 0] = float("inf")
    before = [p.detach().clone() for p in [*policy.parameters(), *value.parameters()]]
    metrics = updater.update(batch)
    after = [*policy.parameters(), *value.parameters()]
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))  # bitwise unchanged
    assert metrics["update/skipped_steps"] == 1.0 and metrics["update/value_skipped_steps"] == 1.0
    assert metrics["update/skipped_steps_total"] == 2.0
    assert all(math.isfinite(v) for k, v in metrics.items() if "cond" not in k)
    metrics = updater.update(batch)  # the corrupt state was dropped: updates resume
    assert metrics["update/skipped_steps"] == 0.0


def test_raise_mode_stops_on_non_finite_statistics():
    policy, value = small_actor_critic(gym.spaces.Box(-1, 1, (2,), np.float32))
    batch = random_batch(policy, value)
    updater = make_acktr(policy, value, on_nonfinite="raise")
    updater.update(batch)
    updater.policy_kfac.linear[1].a[2, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="A factor of layer 1"):
        updater.update(batch)


def test_state_dict_round_trip():
    policy, value = small_actor_critic(gym.spaces.Box(-1, 1, (2,), np.float32))
    batch = random_batch(policy, value)
    updater = make_acktr(policy, value)
    updater.update(batch)
    state = updater.state_dict()
    policy2, value2 = small_actor_critic(gym.spaces.Box(-1, 1, (2,), np.float32))
    policy2.load_state_dict(policy.state_dict())
    value2.load_state_dict(value.state_dict())
    updater2 = make_acktr(policy2, value2)
    updater2.load_state_dict(state)
    torch.manual_seed(5)
    updater.update(batch)
    torch.manual_seed(5)
    updater2.update(batch)
    for a, b in zip([*policy.parameters(), *value.parameters()], [*policy2.parameters(), *value2.parameters()],
                    strict=True):
        assert torch.equal(a, b)


# --- end to end -----------------------------------------------------------------------------------------

REQUIRED = ["update/policy_loss", "update/value_loss", "update/kfac_step_scale", "update/kfac_predicted_kl",
            "update/kfac_cond_a", "update/kfac_cond_g", "update/skipped_steps", "update/kl",
            "time/policy_update_s", "time/value_update_s"]


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_two_iterations_end_to_end(run_training, env: str):
    rows = run_training(["updater=acktr", f"env={env}", "num_envs=4", "steps_per_env=16", "total_steps=128"])
    assert len(rows) == 2
    for row in rows:
        for key in REQUIRED:
            assert row[key] is not None and math.isfinite(row[key]), key
        assert row["update/skipped_steps"] == 0.0


# --- learning (fixed seeds and budgets; each run takes seconds) ------------------------------------------

def test_acktr_reaches_475_on_cartpole(run_training):
    rows = run_training(["updater=acktr", "env=cartpole", "seed=0", "total_steps=80000"])
    assert final_return(rows, last=10) >= 475


def test_acktr_reaches_minus_250_on_pendulum(run_training):
    rows = run_training(["updater=acktr", "env=pendulum", "seed=0", "total_steps=200000", "rollout.gamma=0.95"])
    assert final_return(rows, last=10) >= -250
