"""Vectorized environments: gymnasium vector envs with same-step autoreset."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode

VECTORIZATION_MODES = ("sync", "async")


def make_vector_env(id: str, num_envs: int, vectorization: str = "sync",
                    max_episode_steps: int | None = None, kwargs: dict[str, Any] | None = None,
                    **_: Any) -> gym.vector.VectorEnv:
    """Builds `num_envs` copies of gymnasium env `id`.

    Same-step autoreset: when an episode ends at step t, ``step`` already returns the reset
    observation and hands the episode's last observation over in ``info["final_obs"]`` (masked by
    ``info["_final_obs"]``). The collector uses that final observation to bootstrap truncated
    episodes. Seeding happens at the collector's first ``reset(seed=...)`` (env i gets seed + i).
    """
    if vectorization not in VECTORIZATION_MODES:
        raise ValueError(f"env.vectorization must be one of {VECTORIZATION_MODES}, got {vectorization!r}")
    try:
        gym.spec(id)
    except gym.error.Error as err:
        raise ValueError(f"env.id: unknown gymnasium environment {id!r} ({err})") from err
    return gym.make_vec(
        id,
        num_envs=num_envs,
        vectorization_mode=vectorization,
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        max_episode_steps=max_episode_steps,
        **(kwargs or {}),
    )
