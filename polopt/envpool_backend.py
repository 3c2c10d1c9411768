"""envpool (C++ vectorized envs) behind gymnasium's same-step autoreset vector-env interface.

envpool resets a finished env on the *next* ``step`` call (that step ignores its action), and it
reports an episode that terminates exactly at the time limit as truncated only. The collector
expects gymnasium's same-step semantics instead, so this adapter

- keeps envpool's own time limit out of reach (one step past ours) and applies the limit itself:
  ``truncated = elapsed >= limit`` and ``terminated`` = the task's own termination, both true when
  they coincide, exactly as gymnasium's TimeLimit wrapper reports them;
- resets finished envs within the same ``step`` (envpool can reset a subset of its envs), returns
  their reset observations and hands the last observations over in ``info["final_obs"]`` masked by
  ``info["_final_obs"]``.

It is offered only for the ids in :data:`VERIFIED_IDS`: those where ``scripts/check_envpool.py``
found the same observation layout and, for the same fixed policy, returns and episode lengths within
noise of gymnasium's. The spaces it exposes are gymnasium's own (envpool declares float64 actions
where gymnasium declares float32); rewards come back as float64 like gymnasium's (envpool stores
float32). ``info`` carries only ``final_obs``/``_final_obs``: none of gymnasium's per-step task
entries (``x_velocity``, ``reward_ctrl``, ...) and no ``final_info``.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

# Passed scripts/check_envpool.py (results/envpool_check.json); see the module docstring.
VERIFIED_IDS = frozenset({
    "Ant-v5", "CartPole-v1", "HalfCheetah-v5", "Hopper-v5", "Humanoid-v5", "InvertedPendulum-v5",
    "Pendulum-v1", "Walker2d-v5",
})
# envpool options that change how it runs, not what the task is.
RUNTIME_OPTIONS = frozenset({"num_threads", "thread_affinity_offset"})
# envpool options this adapter sets itself (batch_size < num_envs would make envpool asynchronous).
RESERVED_OPTIONS = frozenset({"num_envs", "batch_size", "seed", "env_seed", "max_episode_steps"})


def usable_cores() -> int:
    """CPUs this process may run on (its affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def envpool_available() -> bool:
    try:
        import envpool  # noqa: F401
    except ImportError:
        return False
    return True


def _same_space(ours: gym.Space, theirs: gym.Space) -> bool:
    if isinstance(ours, gym.spaces.Box) and isinstance(theirs, gym.spaces.Box):
        return ours.shape == theirs.shape and np.allclose(ours.low, theirs.low) and np.allclose(ours.high, theirs.high)
    return ours == theirs


def _check_spaces(id: str, pool_spec: Any, observation_space: gym.Space, action_space: gym.Space) -> None:
    """envpool's declared spaces must match gymnasium's in shape and bounds (dtypes are cast on the way)."""
    with warnings.catch_warnings():  # envpool builds float32 Boxes from float64 bounds, which gymnasium warns about
        warnings.simplefilter("ignore", UserWarning)
        theirs = {"observation": pool_spec.gymnasium_observation_space, "action": pool_spec.gymnasium_action_space}
    for name, ours in (("observation", observation_space), ("action", action_space)):
        if not _same_space(ours, theirs[name]):
            raise ValueError(f"{id}: envpool's {name} space {theirs[name]} differs from gymnasium's {ours}")


class EnvpoolVectorEnv(gym.vector.VectorEnv):
    """`num_envs` copies of envpool task `id` with gymnasium's same-step autoreset.

    Seeds are fixed when an envpool pool is created, so ``reset(seed=s)`` with a new seed rebuilds
    the pool; env i then gets seed s + i (as with gymnasium's vector envs).
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}  # noqa: RUF012

    def __init__(self, id: str, num_envs: int, max_episode_steps: int | None = None,
                 kwargs: dict[str, Any] | None = None, check_verified: bool = True):
        import envpool

        if check_verified and id not in VERIFIED_IDS:
            raise ValueError(
                f"env.backend=envpool is not offered for {id!r}: its envpool task has not been checked against "
                f"gymnasium's (scripts/check_envpool.py). Checked ids: {', '.join(sorted(VERIFIED_IDS))}. "
                "Use env.backend=gymnasium for this env.")
        reference = gym.spec(id)
        self.time_limit: int | None = max_episode_steps or reference.max_episode_steps
        self.spec = copy.deepcopy(reference)
        self.spec.max_episode_steps = self.time_limit
        self.num_envs = num_envs
        self._id = id
        self._options = self._envpool_options(envpool.make_spec(id).config, kwargs or {})
        reference_env = gym.make(id, **{k: v for k, v in (kwargs or {}).items() if k not in RUNTIME_OPTIONS})
        self.single_observation_space = reference_env.observation_space
        self.single_action_space = reference_env.action_space
        reference_env.close()
        _check_spaces(id, envpool.make_spec(id, **self._options), self.single_observation_space,
                      self.single_action_space)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._pool: Any = None
        self._seed: int | None = None
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._no_final = np.full(num_envs, None, dtype=object)

    def _envpool_options(self, known: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(kwargs) & RESERVED_OPTIONS)
        if reserved:
            raise ValueError(f"env.kwargs {reserved}: the envpool backend sets these itself; use num_envs, seed "
                             "and env.max_episode_steps")
        unknown = sorted(set(kwargs) - RUNTIME_OPTIONS - set(known._fields))
        if unknown:
            raise ValueError(f"env.kwargs {unknown} are not envpool options of {self._id}; "
                             "use env.backend=gymnasium for them")
        # envpool never truncates: its limit sits one step past ours, which this adapter applies itself.
        internal_limit = self.time_limit + 1 if self.time_limit else np.iinfo(np.int32).max
        # envpool's own default counts every core of the machine; a run pinned to fewer (taskset, a
        # scheduler's allocation) would then oversubscribe them.
        threads = kwargs.get("num_threads") or min(self.num_envs, usable_cores())
        return {**kwargs, "num_threads": threads, "max_episode_steps": internal_limit}

    def _make_pool(self, seed: int) -> None:
        import envpool

        if self._pool is not None:
            self._pool.close()
        with warnings.catch_warnings():  # the same float32-bounds warning as in _check_spaces
            warnings.simplefilter("ignore", UserWarning)
            self._pool = envpool.make_gymnasium(self._id, num_envs=self.num_envs, seed=seed, **self._options)
            self._pool.observation_space  # noqa: B018  built lazily (and cached) on the first reset otherwise
        self._seed = seed

    def reset(self, *, seed: int | list[int] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if options:
            raise ValueError(f"{self._id}: the envpool backend takes no reset options, got {sorted(options)}")
        if isinstance(seed, list):
            raise ValueError("the envpool backend seeds env i with seed + i; pass one integer seed")
        if self._pool is None or (seed is not None and seed != self._seed):
            self._make_pool(int(np.random.default_rng().integers(2**31)) if seed is None else seed)
        obs, _ = self._pool.reset()
        self._elapsed[:] = 0
        return obs, {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._pool is None:
            raise RuntimeError(f"{self._id}: call reset() before step()")
        # Synchronous envpool (batch_size == num_envs) returns the envs in env-id order.
        obs, rewards, terminated, _, _ = self._pool.step(actions)
        self._elapsed += 1
        truncated = self._elapsed >= self.time_limit if self.time_limit else np.zeros(self.num_envs, dtype=bool)
        dones = terminated | truncated
        info: dict[str, Any] = {}
        if dones.any():
            finished = np.flatnonzero(dones)
            final_obs = self._no_final.copy()
            for i in finished:
                final_obs[i] = obs[i].copy()
            reset_obs, _ = self._pool.reset(finished.astype(np.int32))
            obs = obs.copy()
            obs[finished] = reset_obs
            self._elapsed[finished] = 0
            info = {"final_obs": final_obs, "_final_obs": dones}
        return obs, rewards.astype(np.float64), terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
