"""VPG learns CartPole within a fixed budget (fixed seed)."""

from __future__ import annotations

import pytest

from tests.conftest import final_return


def test_vpg_reaches_400_on_cartpole(run_training):
    rows = run_training(["updater=vpg", "env=cartpole", "seed=1", "total_steps=40960", "updater.lr=0.01"])
    assert final_return(rows) >= 400


@pytest.mark.slow
def test_vpg_balances_inverted_pendulum(run_training):
    rows = run_training(["updater=vpg", "env=inverted_pendulum", "seed=1", "total_steps=61440", "steps_per_env=128",
                         "updater.lr=0.003"])
    assert final_return(rows) >= 900
