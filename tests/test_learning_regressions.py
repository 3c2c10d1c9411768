"""Learning regressions that complete the matrix: every updater on CartPole-v1 and on a continuous task.

(VPG, NPG/TNPG/TRPO on Pendulum, PPO on CartPole and ACKTR have theirs beside their own tests.)
Fixed seeds and budgets; run with ``python -m pytest -m slow``.
"""

from __future__ import annotations

import pytest

from tests.conftest import final_return


@pytest.mark.slow
@pytest.mark.parametrize("updater", ["npg", "tnpg", "trpo", "ppo_kl_alt"])
def test_cartpole_reaches_475(updater, run_training):
    overrides = [f"updater={updater}", "env=cartpole", "seed=0", "total_steps=102400"]
    if updater == "npg":
        overrides.append("updater.step_rule.step_size=0.5")
    assert final_return(run_training(overrides)) >= 475


@pytest.mark.slow
@pytest.mark.parametrize("updater", ["ppo_clip", "ppo_kl", "ppo_kl_alt"])
def test_inverted_pendulum_reaches_950(updater, run_training):
    rows = run_training([f"updater={updater}", "env=inverted_pendulum", "seed=0", "total_steps=102400"])
    assert final_return(rows) >= 950
