"""PPO: the pure losses against explicit computations, the updater's mechanics, configs and learning."""

from __future__ import annotations

import copy
import math
import shutil

import gymnasium as gym
import pytest
import torch
from hydra.utils import instantiate

from polopt.batch import Batch
from polopt.config import ConfigError, validate
from polopt.networks import make_policy, make_value
from polopt.rollout import rollout_to_batch
from polopt.trainer import build
from polopt.updaters.ppo import PPO, ppo_clip, ppo_kl
from polopt.updaters.ppo_losses import (
    AdaptiveKLPenalty,
    adapt_beta,
    approximate_kl,
    clip_fraction,
    clipped_surrogate_loss,
    kl_penalty_loss,
    linear_decay,
    probability_ratio,
)
from polopt.value import ValueFitter
from tests.conftest import compose_config

EPS = 0.2
ONE_THREAD = "torch_threads=1"  # tiny networks: a second BLAS thread only contends on a shared machine


def small_run(updater: str = "ppo_clip", env: str = "cartpole", *overrides: str):
    cfg = compose_config([f"updater={updater}", f"env={env}", "num_envs=4", "steps_per_env=64", "device=cpu",
                          "updater.minibatches=4", ONE_THREAD, *overrides])
    validate(cfg)
    return build(cfg)


def collect_batch(parts) -> Batch:
    rollout = parts.collector.collect(parts.acting_policy)
    parts.policy.obs_normalizer.update(rollout.obs)  # a non-trivial normalizer, as after the first iteration
    return rollout_to_batch(rollout, parts.policy, parts.value, 0.99, 0.95, True, parts.device)


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


# ---------------------------------------------------------------- pure functions

def test_losses_match_a_per_sample_reference_loop():
    gen = torch.Generator().manual_seed(0)
    log_prob = torch.randn(50, generator=gen, dtype=torch.float64) * 0.3
    old_log_prob = torch.randn(50, generator=gen, dtype=torch.float64) * 0.3
    adv = torch.randn(50, generator=gen, dtype=torch.float64)
    kl = torch.rand(50, generator=gen, dtype=torch.float64)
    ratio = probability_ratio(log_prob, old_log_prob)
    clip_terms, penalty_terms, k3_terms, outside = [], [], [], 0
    for lp, olp, a, k in zip(log_prob.tolist(), old_log_prob.tolist(), adv.tolist(), kl.tolist(), strict=True):
        r = math.exp(lp - olp)
        clip_terms.append(min(r * a, min(max(r, 1 - EPS), 1 + EPS) * a))
        penalty_terms.append(r * a - 0.7 * k)
        k3_terms.append((r - 1) - math.log(r))
        outside += abs(r - 1) > EPS
    assert 0 < outside < 50
    torch.testing.assert_close(clipped_surrogate_loss(ratio, adv, EPS), -torch.tensor(clip_terms).mean().double())
    torch.testing.assert_close(kl_penalty_loss(ratio, adv, kl, 0.7), -torch.tensor(penalty_terms).mean().double())
    torch.testing.assert_close(approximate_kl(log_prob - old_log_prob), torch.tensor(k3_terms).mean().double())
    assert clip_fraction(ratio, EPS).item() == pytest.approx(outside / 50)


def test_approximate_kl_estimates_the_analytic_kl():
    from polopt.distributions import DiagGaussian, GaussianParams

    dist, gen = DiagGaussian(), torch.Generator().manual_seed(1)
    old = GaussianParams(torch.zeros(200_000, 2, dtype=torch.float64), torch.zeros(200_000, 2, dtype=torch.float64))
    new = GaussianParams(old.mean + 0.2, old.log_std - 0.1)
    actions = dist.sample(old, gen)
    estimate = approximate_kl(dist.log_prob(new, actions) - dist.log_prob(old, actions))
    assert estimate.item() == pytest.approx(dist.kl(old, new)[0].item(), rel=0.02)


def test_clipped_samples_contribute_zero_gradient_to_the_log_prob():
    ratio_target = torch.tensor([0.5, 0.75, 1.0, 1.1, 1.25, 1.5] * 2, dtype=torch.float64)
    adv = torch.tensor([1.0] * 6 + [-1.0] * 6, dtype=torch.float64) * torch.linspace(0.5, 2.0, 12).double()
    old_log_prob = torch.zeros(12, dtype=torch.float64)
    log_prob = ratio_target.log().requires_grad_()
    (grad,) = torch.autograd.grad(clipped_surrogate_loss(probability_ratio(log_prob, old_log_prob), adv, EPS),
                                  log_prob)
    # d/dlogπ_i of −(1/N) min(r_i A_i, clip(r_i) A_i) = −r_i A_i / N on the unclipped branch, else 0
    clipped = ((adv > 0) & (ratio_target > 1 + EPS)) | ((adv < 0) & (ratio_target < 1 - EPS))
    expected = torch.where(clipped, torch.zeros_like(adv), -ratio_target * adv / 12)
    assert clipped.sum() == 4
    assert torch.equal(grad[clipped], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(grad, expected)


def test_per_sample_network_gradients_vanish_exactly_where_clipped():
    space = gym.spaces.Box(-1.0, 1.0, (3,))
    policy = make_policy(space, gym.spaces.Box(-1.0, 1.0, (2,)), last_layer_scale=1.0).double()
    gen = torch.Generator().manual_seed(2)
    obs = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        params = policy(obs)
        actions = policy.distribution.sample(params, gen)
        target = torch.linspace(0.5, 1.5, 12, dtype=torch.float64)  # ratios on both sides of [1 − ε, 1 + ε]
        old_log_prob = policy.distribution.log_prob(params, actions) - target.log()
    adv = torch.tensor([1.0, -1.0] * 6, dtype=torch.float64)
    weights = list(policy.parameters())

    def grad_of(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, weights)])

    def log_prob(i):
        return policy.distribution.log_prob(policy(obs[i:i + 1]), actions[i:i + 1])

    total = torch.zeros_like(flat_params(policy))
    for i in range(12):
        ratio = probability_ratio(log_prob(i), old_log_prob[i:i + 1])
        per_sample = grad_of(clipped_surrogate_loss(ratio, adv[i:i + 1], EPS)) / 12
        clipped = (adv[i] > 0 and target[i] > 1 + EPS) or (adv[i] < 0 and target[i] < 1 - EPS)
        explicit = torch.zeros_like(total) if clipped else -adv[i] * target[i] * grad_of(log_prob(i).sum()) / 12
        if clipped:
            assert torch.count_nonzero(per_sample) == 0
        torch.testing.assert_close(per_sample, explicit)
        total += per_sample
    full_ratio = probability_ratio(policy.distribution.log_prob(policy(obs), actions), old_log_prob)
    torch.testing.assert_close(grad_of(clipped_surrogate_loss(full_ratio, adv, EPS)), total)


@pytest.mark.parametrize(("kl", "expected"), [
    (0.0151, 2.0), (0.015, 1.0), (0.01, 1.0), (0.0067, 1.0), (0.0066, 0.5), (0.0, 0.5)])
def test_adapt_beta_paper_rule(kl, expected):
    assert adapt_beta(1.0, kl, 0.01, 1.5, 1 / 1.5, 2.0, 1e-4, 1e4) == expected


@pytest.mark.parametrize(("kl", "expected"), [(0.0131, 1.5), (0.013, 1.0), (0.007, 1.0), (0.0069, 1 / 1.5)])
def test_adapt_beta_alternative_rule(kl, expected):
    assert adapt_beta(1.0, kl, 0.01, 1.3, 0.7, 1.5, 1e-4, 1e4) == pytest.approx(expected)


def test_adapt_beta_stays_within_bounds():
    assert adapt_beta(0.3, 1.0, 0.01, 1.5, 1 / 1.5, 2.0, 0.1, 0.5) == 0.5
    assert adapt_beta(0.15, 0.0, 0.01, 1.5, 1 / 1.5, 2.0, 0.1, 0.5) == 0.1


def test_linear_decay():
    assert [linear_decay(3.0, k * 256, 1024) for k in range(6)] == [3.0, 2.25, 1.5, 0.75, 0.0, 0.0]


# ---------------------------------------------------------------- the updater

@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_ratio_is_exactly_one_and_kl_zero_before_the_first_step(env):
    parts = small_run("ppo_kl", env)  # the penalty objective reads the per-sample KL
    batch = collect_batch(parts)
    for minibatch in [batch, *batch.minibatches(4)]:
        terms = parts.updater.loss_terms(minibatch)
        assert torch.equal(terms.ratio, torch.ones_like(terms.ratio))
        assert terms.kl is not None
        assert torch.equal(terms.kl, torch.zeros_like(terms.kl))
    parts.envs.close()


def test_clipped_objective_skips_the_per_sample_kl_unless_early_stopping_reads_it():
    for overrides, computed in [((), False), (("updater.target_kl=0.02",), True)]:
        parts = small_run("ppo_clip", "cartpole", *overrides)
        terms = parts.updater.loss_terms(collect_batch(parts))
        assert (terms.kl is not None) == computed
        parts.envs.close()


@pytest.mark.parametrize(("lr", "beta_after"), [(0.0, 0.5), (0.3, 2.0)])
def test_beta_adapts_once_per_update_after_the_epochs(lr, beta_after):
    parts = small_run("ppo_kl", "cartpole", f"updater.lr={lr}", "updater.anneal_lr=false")
    batch, updater = collect_batch(parts), parts.updater
    seen: list[float] = []
    loss = updater.objective.loss

    def recording_loss(*args):
        seen.append(updater.objective.beta)
        return loss(*args)

    updater.objective.loss = recording_loss
    metrics = updater.update(batch)
    assert len(seen) == 10 * 4 and set(seen) == {1.0}  # β is fixed during the 40 minibatch steps
    assert metrics["update/beta"] == updater.objective.beta == beta_after  # then one ×2 or ÷2 step
    assert (metrics["update/approx_kl"] == 0.0) == (lr == 0.0)
    parts.envs.close()


def test_policy_and_value_losses_do_not_reach_each_others_network():
    parts = small_run("ppo_clip", "pendulum", "updater.entropy_coef=0.01")
    terms = parts.updater.loss_terms(collect_batch(parts))
    policy_weights, value_weights = list(parts.policy.parameters()), list(parts.value.parameters())
    policy_part = terms.policy - 0.01 * terms.entropy
    assert all(g is None for g in torch.autograd.grad(policy_part, value_weights, allow_unused=True,
                                                      retain_graph=True))
    assert all(g is None for g in torch.autograd.grad(terms.value, policy_weights, allow_unused=True))
    parts.envs.close()


def test_fitter_mode_steps_only_the_policy_then_fits_the_value():
    parts = small_run("ppo_clip", "cartpole", "updater.value_training=fitter")
    updater = parts.updater
    assert {id(p) for p in updater.params} == {id(p) for p in parts.policy.parameters()}
    value_before = flat_params(parts.value)
    metrics = updater.update(collect_batch(parts))
    assert not torch.equal(flat_params(parts.value), value_before)
    assert {"update/value_loss", "time/value_update_s"} <= metrics.keys()
    parts.envs.close()


def test_non_finite_steps_are_skipped_and_counted():
    parts = small_run("ppo_clip", "cartpole")
    batch = collect_batch(parts)
    batch.advantages[3] = float("nan")  # poisons the minibatch holding sample 3 in every epoch
    before = flat_params(parts.policy)
    metrics = parts.updater.update(batch)
    assert metrics["update/skipped_steps"] == 10.0
    assert torch.isfinite(flat_params(parts.policy)).all() and not torch.equal(flat_params(parts.policy), before)
    parts.envs.close()


def test_target_kl_stops_the_epochs():
    parts = small_run("ppo_clip", "cartpole", "updater.lr=0.01", "updater.target_kl=1e-6")
    assert parts.updater.update(collect_batch(parts))["update/epochs"] == 1.0
    parts.envs.close()


def test_learning_rate_decays_linearly_over_the_step_budget():
    parts = small_run("ppo_clip", "cartpole", "total_steps=1024")
    batch = collect_batch(parts)  # 256 steps: four updates spend the budget
    lrs = [parts.updater.update(batch)["update/lr"] for _ in range(4)]
    assert lrs == pytest.approx([3e-4, 2.25e-4, 1.5e-4, 0.75e-4])
    parts.envs.close()


@pytest.mark.parametrize("updater", ["ppo_clip", "ppo_kl"])
def test_state_dict_resumes_exactly(updater):
    parts = small_run(updater, "cartpole", "total_steps=2048", "updater.lr=0.01")
    batch = collect_batch(parts)
    parts.updater.update(batch)
    saved = copy.deepcopy({"policy": parts.policy.state_dict(), "value": parts.value.state_dict(),
                           "updater": parts.updater.state_dict()})
    torch.manual_seed(5)
    expected = parts.updater.update(batch)
    fresh = small_run(updater, "cartpole", "total_steps=2048", "updater.lr=0.01")
    fresh.policy.load_state_dict(saved["policy"])
    fresh.value.load_state_dict(saved["value"])
    fresh.updater.load_state_dict(saved["updater"])
    torch.manual_seed(5)
    resumed = fresh.updater.update(batch)
    for key in ("update/lr", "update/beta", "update/policy_loss", "update/approx_kl"):
        assert resumed.get(key) == expected.get(key)
    assert torch.equal(flat_params(fresh.policy), flat_params(parts.policy))
    parts.envs.close()
    fresh.envs.close()


def test_configs_compose_with_their_rules_and_reject_bad_values():
    alt = compose_config(["updater=ppo_kl_alt", "env=cartpole"]).updater
    assert (alt.beta_increase_above, alt.beta_decrease_below, alt.beta_factor) == (1.3, 0.7, 1.5)
    assert alt.kl_target == 0.01 and alt.epochs == 10 and alt.minibatches == 32
    for bad in ["updater=ppo_clip updater.clip_range=0", "updater=ppo_kl updater.beta_factor=1.0",
                "updater=ppo_kl updater.value_training=both", "updater=ppo_clip updater.epochs=0"]:
        with pytest.raises(ConfigError):
            validate(compose_config([*bad.split(), "env=cartpole"]))
    with pytest.raises(ValueError, match="beta_decrease_below"):
        AdaptiveKLPenalty(increase_above=1.5, decrease_below=2.0)
    with pytest.raises(ValueError, match="anneal_steps"):
        ppo_clip(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), ValueFitter, anneal_lr=True)


def test_python_api_builds_both_variants():
    obs_space, act_space = gym.spaces.Box(-1.0, 1.0, (3,)), gym.spaces.Discrete(2)
    policy = make_policy(obs_space, act_space)
    value = make_value(obs_space, policy.obs_normalizer)
    for updater in (ppo_clip(policy, value, ValueFitter), ppo_kl(policy, value, ValueFitter, kl_target=0.02)):
        assert isinstance(updater, PPO) and updater.joint and updater.anneal_steps is None
    assert instantiate(compose_config(["updater=ppo_kl", "env=cartpole"]).updater, policy=policy,
                       value=value).objective.kl_target == 0.01


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_update_runs_on_cuda():
    parts = small_run("ppo_kl", "pendulum", "device=cuda")
    batch = collect_batch(parts)
    assert batch.obs.is_cuda and torch.equal(parts.updater.loss_terms(batch).ratio, torch.ones_like(batch.advantages))
    before = flat_params(parts.policy)
    metrics = parts.updater.update(batch)
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["update/skipped_steps"] == 0.0
    assert flat_params(parts.policy).is_cuda and not torch.equal(flat_params(parts.policy), before)
    parts.envs.close()


# ---------------------------------------------------------------- end to end

@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
@pytest.mark.parametrize("updater", ["ppo_clip", "ppo_kl"])
def test_two_iterations_end_to_end(run_training, updater, env):
    rows = run_training([f"updater={updater}", f"env={env}", "num_envs=2", "steps_per_env=64",
                         "total_steps=256", "updater.minibatches=4", "updater.epochs=2", ONE_THREAD])
    assert len(rows) == 2
    for row in rows:
        assert all(v is not None and math.isfinite(v) for v in row.values()), row
        assert row["update/epochs"] == 2.0 and row["update/skipped_steps"] == 0.0
    assert ("update/beta" in rows[-1]) == (updater == "ppo_kl")
    assert ("update/clip_fraction" in rows[-1]) == (updater == "ppo_clip")


def sustained_best(rows: list[dict], window: int = 3) -> float:
    """Best mean of `rollout/ep_return` over `window` consecutive iterations."""
    returns = [r["rollout/ep_return"] for r in rows if r.get("rollout/ep_return") is not None]
    return max(sum(returns[i:i + window]) / window for i in range(len(returns) - window + 1))


@pytest.mark.slow
@pytest.mark.parametrize("updater", ["ppo_clip", "ppo_kl"])
def test_solves_cartpole_within_100k_steps(run_training, updater):
    rows = run_training([f"updater={updater}", "env=cartpole", "total_steps=100000", "seed=0", ONE_THREAD])
    assert sustained_best(rows) >= 475.0


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                    reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.parametrize("updater", ["ppo_clip", "ppo_kl"])
def test_compiled_minibatch_loss_updates_like_eager(updater):
    """updater.compile=true runs the same loss through generated kernels: same update up to rounding,
    and adapting β between updates does not recompile (it is read as a tensor input)."""
    from torch._dynamo.utils import counters

    results = {}
    for compiled in (False, True):
        parts = small_run(updater, "pendulum", f"updater.compile={str(compiled).lower()}", "updater.epochs=2")
        batch = collect_batch(parts)
        counters.clear()
        metrics = [parts.updater.update(batch) for _ in range(3)]
        results[compiled] = (flat_params(parts.policy), flat_params(parts.value), metrics)
        parts.envs.close()
    assert counters["stats"]["unique_graphs"] == 1  # one minibatch size, and β read as an input
    for eager, compiled in zip(results[False][:2], results[True][:2], strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    for eager, compiled in zip(results[False][2], results[True][2], strict=True):
        assert compiled.get("update/beta") == eager.get("update/beta")
        assert compiled["update/policy_loss"] == pytest.approx(eager["update/policy_loss"], rel=1e-3, abs=1e-5)
