"""Capture and restore the state of running episodes, so a resumed run continues the same episodes.

Gymnasium's MuJoCo envs pickle only their constructor arguments, so the state is taken explicitly:
MuJoCo's full integration state (``mj_getState`` with ``mjSTATE_INTEGRATION``: time, qpos, qvel,
activations, warm start, controls and applied forces), any other plain attributes of the unwrapped
env (e.g. classic control's ``state``), the env's random generator, and wrapper counters such as
TimeLimit's elapsed steps. Supported for in-process (sync) vector envs; for other backends
:func:`capture` returns None and a resumed run starts fresh episodes.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np

# Per-wrapper fields that change during an episode.
WRAPPER_FIELDS = ("_elapsed_steps", "_has_reset")
# Attributes of an unwrapped env that are configuration or rendering handles, not episode state.
SKIPPED_ATTRIBUTES = {"spec", "render_mode", "screen", "clock", "isopen", "model", "data", "mujoco_renderer",
                      "action_space", "observation_space", "_np_random", "np_random_seed", "_ezpickle_args",
                      "_ezpickle_kwargs"}


def _chain(env: gym.Env) -> list[Any]:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _mujoco_state(env: Any) -> np.ndarray | None:
    model, data = getattr(env, "model", None), getattr(env, "data", None)
    if model is None or data is None:
        return None
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, state, spec)
    return state


def capture_env(env: gym.Env) -> dict[str, Any]:
    layers = _chain(env)
    inner = layers[-1]
    return {
        "wrappers": [{k: getattr(layer, k) for k in WRAPPER_FIELDS if hasattr(layer, k)} for layer in layers],
        "np_random": copy.deepcopy(inner.np_random.bit_generator.state),
        "mujoco": _mujoco_state(inner),
        "attributes": {k: copy.deepcopy(v) for k, v in vars(inner).items()
                       if k not in SKIPPED_ATTRIBUTES and not callable(v)},
    }


def restore_env(env: gym.Env, state: dict[str, Any]) -> None:
    layers = _chain(env)
    for layer, fields in zip(layers, state["wrappers"], strict=True):
        for key, value in fields.items():
            setattr(layer, key, value)
    inner = layers[-1]
    inner.np_random.bit_generator.state = state["np_random"]
    for key, value in state["attributes"].items():
        setattr(inner, key, copy.deepcopy(value))
    if state["mujoco"] is not None:
        import mujoco

        mujoco.mj_setState(inner.model, inner.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(inner.model, inner.data)


def capture(envs: Any) -> list[dict[str, Any]] | None:
    """States of all envs of an in-process vector env, or None when they cannot be captured."""
    if not isinstance(envs, gym.vector.SyncVectorEnv):
        return None
    return [capture_env(env) for env in envs.envs]


def restore(envs: Any, states: list[dict[str, Any]] | None) -> bool:
    """Restores states from :func:`capture`; returns False (nothing changed) when that is not possible."""
    if states is None or not isinstance(envs, gym.vector.SyncVectorEnv) or len(states) != len(envs.envs):
        return False
    for env, state in zip(envs.envs, states, strict=True):
        restore_env(env, state)
    return True
