"""Env backends: same-step autoreset on envpool, time-limit flags as gymnasium's, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from polopt import envpool_backend
from polopt.envs import make_vector_env
from polopt.networks import make_policy
from polopt.rollout import Collector

UNCHECKED_ID = "MountainCar-v0"  # exists in both gymnasium and envpool, never checked


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match=r"env.backend must be one of \('gymnasium', 'envpool'\), got 'nope'"):
        make_vector_env("CartPole-v1", 2, backend="nope")


def test_envpool_backend_without_the_package_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(envpool_backend, "envpool_available", lambda: False)
    with pytest.raises(ValueError, match=r"Hopper-v5: the envpool package is not installed"):
        make_vector_env("Hopper-v5", 2, backend="envpool")


def test_envpool_refuses_an_unchecked_env_and_names_it():
    pytest.importorskip("envpool")
    assert UNCHECKED_ID not in envpool_backend.VERIFIED_IDS
    with pytest.raises(ValueError, match=rf"not offered for '{UNCHECKED_ID}'.*env.backend=gymnasium"):
        make_vector_env(UNCHECKED_ID, 2, backend="envpool")


@pytest.mark.parametrize(("options", "message"), [
    ({"vectorization": "async"}, r"leave env.vectorization=sync"),
    ({"kwargs": {"not_an_option": 1}}, r"\['not_an_option'\] are not envpool options of Hopper-v5"),
    ({"kwargs": {"batch_size": 1}}, r"\['batch_size'\]: the envpool backend sets these itself"),
])
def test_envpool_rejects_options_it_cannot_honour(options, message):
    pytest.importorskip("envpool")
    with pytest.raises(ValueError, match=message):
        make_vector_env("Hopper-v5", 2, backend="envpool", **options)


@pytest.mark.parametrize(("num_envs", "cpus", "given", "expected"), [(8, 2, None, 2), (8, 1, None, 1),
                                                                    (2, 16, None, 2), (8, 1, 4, 4)])
def test_envpool_threads_default_to_the_cpus_the_run_may_use(monkeypatch, num_envs, cpus, given, expected):
    """envpool's own default counts every core of the machine, which oversubscribes a pinned run."""
    pytest.importorskip("envpool")
    monkeypatch.setattr(envpool_backend, "usable_cores", lambda: cpus)
    envs = make_vector_env("CartPole-v1", num_envs, backend="envpool",
                           kwargs=None if given is None else {"num_threads": given})
    assert envs._options["num_threads"] == expected
    envs.close()


def test_envpool_exposes_gymnasium_spaces_and_spec():
    pytest.importorskip("envpool")
    import gymnasium as gym

    envs = make_vector_env("Hopper-v5", 3, backend="envpool", kwargs={"num_threads": 1})
    reference = gym.make("Hopper-v5")
    assert envs.single_observation_space == reference.observation_space
    assert envs.single_action_space == reference.action_space  # float32, as gymnasium declares it
    assert envs.num_envs == 3 and envs.spec is not None and envs.spec.id == "Hopper-v5"
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (3, 11) and obs.dtype == np.float64
    envs.close()
    assert envs.closed


def test_envpool_seeding_gives_env_i_seed_plus_i_and_reseeding_repeats():
    pytest.importorskip("envpool")
    envs = make_vector_env("Hopper-v5", 2, backend="envpool")
    first = envs.reset(seed=3)[0].copy()
    assert np.array_equal(envs.reset(seed=4)[0][0], first[1])
    assert np.array_equal(envs.reset(seed=3)[0], first)
    assert not np.array_equal(first[0], first[1])


@pytest.mark.filterwarnings("ignore:.*precision lowered:UserWarning")  # raw envpool's float32 Box bounds
@pytest.mark.parametrize("id", ["CartPole-v1", "Hopper-v5"])
def test_envpool_same_step_autoreset_matches_raw_envpool_without_its_reset_step(id):
    """Raw envpool (next-step autoreset) spends one extra call returning the reset observation; the
    adapter must produce the same trajectory with that call folded into the step that ended the episode."""
    envpool = pytest.importorskip("envpool")
    raw = envpool.make_gymnasium(id, num_envs=1, seed=7)
    ours = make_vector_env(id, 1, backend="envpool")
    raw_obs, _ = raw.reset()
    obs, _ = ours.reset(seed=7)
    assert np.array_equal(obs, raw_obs)
    rng, episodes = np.random.default_rng(0), 0
    for _ in range(300):
        action = rng.integers(0, 2, 1) if id == "CartPole-v1" else rng.uniform(-1, 1, (1, 3))
        obs, reward, terminated, truncated, info = ours.step(action)
        raw_obs, raw_reward, raw_terminated, _, _ = raw.step(action)
        assert reward[0] == pytest.approx(float(raw_reward[0])) and terminated[0] == raw_terminated[0]
        if terminated[0] or truncated[0]:
            episodes += 1
            assert info["_final_obs"][0] and np.array_equal(info["final_obs"][0], raw_obs[0])
            raw_obs, *_ = raw.step(action)  # raw envpool resets now and ignores the action
        else:
            assert "final_obs" not in info
        assert np.array_equal(obs, raw_obs)
    assert episodes >= 5


def test_envpool_time_limit_is_truncation_with_final_obs_and_reset_obs_next():
    pytest.importorskip("envpool")
    envs = make_vector_env("Hopper-v5", 3, backend="envpool", max_episode_steps=5)
    envs.reset(seed=0)
    zeros = np.zeros((3, 3), dtype=np.float32)
    for _ in range(4):
        previous, _, terminated, truncated, info = envs.step(zeros)
        assert not (terminated | truncated).any() and info == {}
    obs, _, terminated, truncated, info = envs.step(zeros)
    assert truncated.all() and not terminated.any()
    assert info["_final_obs"].all()
    final = np.stack(info["final_obs"])
    assert np.abs(final - previous).max() < 0.5  # one physics step on from the previous observation
    assert np.abs(obs[:, 0] - 1.25).max() < 0.01  # reset height 1.25 (± reset noise), not the final one
    assert not np.array_equal(final, obs)
    for _ in range(4):
        assert not envs.step(zeros)[3].any()
    assert envs.step(zeros)[3].all()  # the limit counts again from the reset


def _first_termination_step(backend: str, seed: int) -> int:
    envs = make_vector_env("CartPole-v1", 1, backend=backend)
    envs.reset(seed=seed)
    for t in range(1, 500):
        if envs.step(np.ones(1, dtype=np.int64))[2][0]:
            return t
    raise AssertionError("always pushing right should end the episode")


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_termination_exactly_at_the_time_limit_is_both_terminated_and_truncated(backend):
    """gymnasium's TimeLimit reports both flags; raw envpool would report truncation only."""
    if backend == "envpool":
        pytest.importorskip("envpool")
    limit = _first_termination_step(backend, seed=5)
    envs = make_vector_env("CartPole-v1", 1, backend=backend, max_episode_steps=limit)
    envs.reset(seed=5)
    for _ in range(limit - 1):
        assert not np.any(envs.step(np.ones(1, dtype=np.int64))[2:4])
    _, _, terminated, truncated, info = envs.step(np.ones(1, dtype=np.int64))
    assert terminated[0] and truncated[0] and info["_final_obs"][0]


def test_collector_on_envpool_bootstraps_from_the_final_obs_at_the_time_limit():
    pytest.importorskip("envpool")
    envs = make_vector_env("Hopper-v5", 2, backend="envpool", max_episode_steps=5)
    policy = make_policy(envs.single_observation_space, envs.single_action_space)
    policy.body[-1].weight.data.zero_()  # mean action 0 with σ = 1: Hopper stays up for 5 steps
    policy.log_std.data.fill_(-5.0)
    collector = Collector(envs, 12, seed=0)
    rollout = collector.collect(policy)
    assert rollout.truncated.nonzero()[:, 0].unique().tolist() == [4, 9]
    assert not rollout.terminated.any()
    assert not torch_equal(rollout.next_obs[4], rollout.obs[5])  # final obs, not the reset one
    assert torch_equal(rollout.next_obs[3], rollout.obs[4])
    assert collector.global_step == 24
    assert collector.episodes.pop_finished() and len(collector.episodes.recent) == 4


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_training_runs_on_the_envpool_backend(run_training):
    pytest.importorskip("envpool")
    rows = run_training(["updater=vpg", "env=cartpole", "env.backend=envpool", "num_envs=4", "steps_per_env=128",
                         "total_steps=1024"])
    assert len(rows) == 2
    assert all(r["rollout/ep_return"] > 0 for r in rows)
