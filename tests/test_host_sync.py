"""No host synchronization inside the hot loops, counted on any device.

Every read of a tensor's value by Python (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``) runs
``aten::_local_scalar_dense``, which on a GPU waits for the device. A dispatch mode counts those
reads; a loop is sync-free when the count does not grow with its number of iterations.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from polopt.natural_gradient.conjugate_gradient import conjugate_gradient
from polopt.rollout import rollout_to_batch
from polopt.trainer import build
from tests.conftest import compose_config


class ScalarReads(TorchDispatchMode):
    """Counts value reads by the host while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def reads(fn) -> int:
    with ScalarReads() as mode:
        fn()
    return mode.count


def test_conjugate_gradient_reads_nothing_back():
    generator = torch.Generator().manual_seed(0)
    m = torch.randn(30, 30, generator=generator, dtype=torch.float64)
    a = m @ m.T + torch.eye(30, dtype=torch.float64)
    b = torch.randn(30, generator=generator, dtype=torch.float64)
    for iterations in (5, 25):
        assert reads(lambda n=iterations: conjugate_gradient(lambda v: a @ v, b, max_iters=n, residual_tol=1e-12)) == 0


def updater_reads(updater: str, *overrides: str) -> int:
    cfg = compose_config([f"updater={updater}", "env=pendulum", "num_envs=2", "steps_per_env=64", "device=cpu",
                          "logger=none", *overrides])
    parts = build(cfg)
    rollout = parts.collector.collect(parts.acting_policy)
    batch = rollout_to_batch(rollout, parts.policy, parts.value, 0.99, 0.95, True, parts.device)
    parts.updater.update(batch)  # first update: lazy state, first-call paths
    count = reads(lambda: parts.updater.update(batch))
    parts.envs.close()
    return count


def test_ppo_epochs_read_back_once_per_update_not_per_minibatch():
    few = updater_reads("ppo_clip", "updater.epochs=1", "updater.minibatches=2")
    many = updater_reads("ppo_clip", "updater.epochs=4", "updater.minibatches=8")
    assert few == many


def test_critic_fit_reads_back_once_per_update_not_per_minibatch():
    few = updater_reads("trpo", "updater.value_fitter.epochs=1", "updater.value_fitter.minibatches=2")
    many = updater_reads("trpo", "updater.value_fitter.epochs=5", "updater.value_fitter.minibatches=8")
    assert few == many


def test_trpo_policy_step_reads_back_a_fixed_number_of_times_when_the_line_search_decides_on_the_device():
    """stop_early=false (the default on a GPU): CG and the line search read nothing back, so the count
    does not depend on the CG iterations or on how many trials the line search rejects."""
    counts = {updater_reads("trpo", "updater.step_rule.stop_early=false", f"updater.solver.max_iters={n}",
                            f"updater.step_rule.max_kl={kl}") for n in (3, 15) for kl in (1e-5, 0.01)}
    assert len(counts) == 1
