"""Deterministic evaluation of a checkpoint.

``python -m polopt.evaluate checkpoint=PATH [episodes=10] [seed=12345] [video_dir=DIR] [stochastic=false]``
prints the mean ± std episodic return; with ``video_dir`` it records videos (gymnasium RecordVideo, needs
offscreen rendering, e.g. MUJOCO_GL=egl, and the ``moviepy`` package).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from polopt import checkpoint
from polopt.networks import Policy

USAGE = "usage: python -m polopt.evaluate checkpoint=PATH [episodes=10] [seed=12345] [video_dir=DIR]"


def make_eval_env(env_cfg: dict[str, Any], video_dir: str | None = None) -> gym.Env:
    kwargs = dict(env_cfg.get("kwargs") or {})
    if video_dir:
        kwargs["render_mode"] = "rgb_array"
    env = gym.make(env_cfg["id"], max_episode_steps=env_cfg.get("max_episode_steps"), **kwargs)
    if video_dir:
        env = gym.wrappers.RecordVideo(env, video_dir, episode_trigger=lambda _: True, disable_logger=True)
    return env


@torch.no_grad()
def evaluate_policy(policy: Policy, env: gym.Env, episodes: int, seed: int,
                    deterministic: bool = True) -> list[float]:
    """Runs `episodes` full episodes (the distribution's mode when deterministic) and returns their returns."""
    policy = policy.cpu().eval()
    dist = policy.distribution
    box = isinstance(env.action_space, gym.spaces.Box)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            params = policy(torch.as_tensor(np.asarray(obs, dtype=np.float32)).unsqueeze(0))
            action = (dist.mode(params) if deterministic else dist.sample(params))[0].numpy()
            if box:
                action = np.clip(action, env.action_space.low, env.action_space.high)  # type: ignore[attr-defined]
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def load_policy(state: dict[str, Any], env: gym.Env) -> Policy:
    """Rebuilds the policy a checkpoint was trained with and loads its weights and normalizer."""
    policy: Policy = instantiate(OmegaConf.create(state["config"]["policy"]),
                                 observation_space=env.observation_space, action_space=env.action_space)
    policy.load_state_dict(state["policy"])
    return policy


def evaluate_checkpoint(path: str | Path, episodes: int = 10, seed: int = 12345, video_dir: str | None = None,
                        deterministic: bool = True) -> list[float]:
    state = checkpoint.load(path)
    env = make_eval_env(state["config"]["env"], video_dir)
    try:
        return evaluate_policy(load_policy(state, env), env, episodes, seed, deterministic)
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    args = OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv))
    unknown = set(args) - {"checkpoint", "episodes", "seed", "video_dir", "stochastic"}
    if "checkpoint" not in args or unknown:
        print(f"{USAGE}\nunknown arguments: {sorted(unknown)}" if unknown else USAGE, file=sys.stderr)
        return 2
    returns = evaluate_checkpoint(args.checkpoint, int(args.get("episodes", 10)), int(args.get("seed", 12345)),
                                  args.get("video_dir"), deterministic=not args.get("stochastic", False))
    spread = statistics.pstdev(returns) if len(returns) > 1 else 0.0
    print(f"return {statistics.fmean(returns):.1f} ± {spread:.1f} over {len(returns)} episodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
