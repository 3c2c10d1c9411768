"""Vectorized environments with same-step autoreset, from gymnasium or envpool."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode

BACKENDS = ("gymnasium", "envpool")
VECTORIZATION_MODES = ("sync", "async")


def make_vector_env(id: str, num_envs: int, backend: str = "gymnasium", vectorization: str = "sync",
                    max_episode_steps: int | None = None, kwargs: dict[str, Any] | None = None,
                    **_: Any) -> gym.vector.VectorEnv:
    """Builds `num_envs` copies of env `id`.

    Same-step autoreset for every backend: when an episode ends at step t, ``step`` already returns
    the reset observation and hands the episode's last observation over in ``info["final_obs"]``
    (masked by ``info["_final_obs"]``). The collector uses that final observation to bootstrap
    truncated episodes. Seeding happens at the collector's first ``reset(seed=...)`` (env i gets
    seed + i).

    ``backend="gymnasium"`` steps gymnasium envs in this process (``vectorization="sync"``) or one
    process per env (``"async"``). ``backend="envpool"`` steps envpool's C++ envs on its own threads
    (``+env.kwargs.num_threads=N`` on the command line; by default one per core this process may
    run on, up to `num_envs`), only for the ids checked against gymnasium's tasks (polopt.envpool_backend).
    """
    if backend not in BACKENDS:
        raise ValueError(f"env.backend must be one of {BACKENDS}, got {backend!r}")
    if vectorization not in VECTORIZATION_MODES:
        raise ValueError(f"env.vectorization must be one of {VECTORIZATION_MODES}, got {vectorization!r}")
    try:
        gym.spec(id)
    except gym.error.Error as err:
        raise ValueError(f"env.id: unknown gymnasium environment {id!r} ({err})") from err
    if backend == "envpool":
        return _make_envpool(id, num_envs, vectorization, max_episode_steps, kwargs)
    return gym.make_vec(
        id,
        num_envs=num_envs,
        vectorization_mode=vectorization,
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        max_episode_steps=max_episode_steps,
        **(kwargs or {}),
    )


def _make_envpool(id: str, num_envs: int, vectorization: str, max_episode_steps: int | None,
                  kwargs: dict[str, Any] | None) -> gym.vector.VectorEnv:
    from polopt.envpool_backend import EnvpoolVectorEnv, envpool_available

    if not envpool_available():
        raise ValueError(f"env.backend=envpool for {id}: the envpool package is not installed "
                         "(pip install envpool), or use env.backend=gymnasium")
    if vectorization != "sync":
        raise ValueError(f"env.backend=envpool for {id}: envpool runs its own threads; leave env.vectorization=sync "
                         "and set env.kwargs.num_threads instead")
    return EnvpoolVectorEnv(id, num_envs, max_episode_steps, kwargs)
