"""The training loop: owns collection, advantages, logging and checkpoints; updaters own the update."""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from polopt import checkpoint
from polopt.advantages import explained_variance
from polopt.batch import Batch
from polopt.guards import NonFiniteError, all_finite
from polopt.logging import Logger, MetricsFile
from polopt.networks import Policy
from polopt.normalization import RewardScaler
from polopt.rollout import Collector, rollout_to_batch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but torch sees no CUDA device; use device=cpu or auto")
    return torch.device(name)


@dataclass
class Components:
    """Everything a run is built from (so tests can build one without the CLI)."""

    cfg: DictConfig
    device: torch.device
    envs: Any
    policy: Policy
    value: torch.nn.Module
    updater: Any
    collector: Collector
    acting_policy: Policy = field(init=False)

    def __post_init__(self) -> None:
        # Small-batch inference is launch-bound on a GPU: act with a CPU copy, update on the device.
        cpu = self.device.type == "cpu"
        self.acting_policy = self.policy if cpu else copy.deepcopy(self.policy).cpu()


def make_deterministic() -> None:
    """Deterministic torch kernels; cuBLAS needs a fixed workspace for that (set before CUDA starts)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def build(cfg: DictConfig) -> Components:
    """Seeds everything and builds envs, networks, updater and collector from the config."""
    if cfg.deterministic:
        make_deterministic()
    checkpoint.seed_everything(cfg.seed)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    envs = instantiate(cfg.env, num_envs=cfg.num_envs)
    policy = instantiate(cfg.policy, observation_space=envs.single_observation_space,
                         action_space=envs.single_action_space).to(device)
    value = instantiate(cfg.value, observation_space=envs.single_observation_space,
                        obs_normalizer=policy.obs_normalizer).to(device)
    updater = instantiate(cfg.updater, policy=policy, value=value)
    scaler = RewardScaler(cfg.num_envs, cfg.rollout.gamma) if cfg.rollout.scale_rewards else None
    collector = Collector(envs, cfg.steps_per_env, cfg.seed, scaler)
    return Components(cfg, device, envs, policy, value, updater, collector)


@torch.no_grad()
def common_metrics(policy: Policy, batch: Batch) -> dict[str, float]:
    """Metrics defined identically for every updater, measured after its update."""
    new_params = policy(batch.obs)
    dist = policy.distribution
    return {
        "update/kl": float(dist.kl(batch.old_params, new_params).mean()),
        "update/entropy": float(dist.entropy(new_params).mean()),
        "update/explained_variance": explained_variance(batch.old_values, batch.returns),
    }


class Trainer:
    """Runs iterations of collect → batch → update → log, with checkpoints and resume."""

    def __init__(self, parts: Components, logger: Logger, run_dir: Path):
        self.parts = parts
        self.cfg = parts.cfg
        self.logger = logger
        self.run_dir = run_dir
        self.checkpoint_path = run_dir / "checkpoints" / "last.pt"
        self.iteration = 0
        self.interrupted = False
        self.steps_per_iteration = self.cfg.num_envs * self.cfg.steps_per_env
        self.num_iterations = math.ceil(self.cfg.total_steps / self.steps_per_iteration)

    @property
    def global_step(self) -> int:
        return self.parts.collector.global_step

    def iterate(self) -> dict[str, float]:
        """One iteration; returns its metrics."""
        p, rollout_cfg = self.parts, self.cfg.rollout
        start = time.perf_counter()
        rollout = p.collector.collect(p.acting_policy)
        collected = time.perf_counter()
        batch = rollout_to_batch(rollout, p.policy, p.value, rollout_cfg.gamma, rollout_cfg.gae_lambda,
                                 rollout_cfg.normalize_advantages, p.device, rollout_cfg.bootstrap_truncated)
        advantaged = time.perf_counter()
        metrics = p.updater.update(batch)
        self._check_finite(metrics)
        metrics.update(common_metrics(p.policy, batch))
        p.policy.obs_normalizer.update(rollout.obs.to(p.device))
        if p.acting_policy is not p.policy:
            p.acting_policy.load_state_dict(p.policy.state_dict())
        end = time.perf_counter()
        self.iteration += 1
        metrics.update(self._episode_metrics())
        metrics.update({"time/collect_s": collected - start, "time/advantage_s": advantaged - collected,
                        "time/update_s": end - advantaged, "time/iteration_s": end - start,
                        "time/sps": self.steps_per_iteration / (end - start), "iteration": self.iteration})
        return metrics

    def _check_finite(self, metrics: dict[str, float]) -> None:
        """Updaters skip non-finite steps and count them (``update/*skipped_steps``); ``nonfinite=raise`` stops."""
        skipped = {k: v for k, v in metrics.items() if k.endswith("skipped_steps") and v > 0}
        if skipped and self.cfg.nonfinite == "raise":
            raise NonFiniteError(f"non-finite numbers at iteration {self.iteration + 1} (global step "
                                 f"{self.global_step}): {skipped}; the weights were left unchanged")
        if not all_finite([*self.parts.policy.parameters(), *self.parts.value.parameters()]):
            raise NonFiniteError(f"parameters became non-finite at iteration {self.iteration + 1}")

    def _episode_metrics(self) -> dict[str, float]:
        finished = self.parts.collector.episodes.pop_finished()
        if not finished:
            return {}
        returns, lengths = zip(*finished, strict=True)
        return {"rollout/ep_return": sum(returns) / len(returns),
                "rollout/ep_length": sum(lengths) / len(lengths), "rollout/episodes": float(len(finished))}

    def recent_return(self) -> float:
        recent = self.parts.collector.episodes.recent
        return sum(r for r, _ in recent) / len(recent) if recent else math.nan

    def _request_stop(self, signum: int, frame: Any) -> None:
        # The first Ctrl-C lets the current iteration finish so the checkpoint is consistent;
        # a second one interrupts at once.
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        print("\nstopping after this iteration (Ctrl-C again to abort at once)", file=sys.stderr)

    def train(self) -> None:
        """Trains to the step budget, or until Ctrl-C; always ends with a checkpoint."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics_file = MetricsFile(self.run_dir / "metrics.jsonl")
        bar = tqdm(total=self.num_iterations * self.steps_per_iteration, initial=self.global_step,
                   unit="step", unit_scale=True, dynamic_ncols=True, disable=not self.cfg.progress)
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._request_stop) if in_main_thread else None
        try:
            while self.iteration < self.num_iterations and not self.interrupted:
                metrics = self.iterate()
                metrics_file.log(metrics, self.global_step)
                self.logger.log(metrics, self.global_step)
                bar.update(self.steps_per_iteration)
                bar.set_postfix(sps=f"{metrics['time/sps']:.0f}", ret=f"{self.recent_return():.1f}")
                if self.iteration % self.cfg.checkpoint_every == 0:
                    self.save()
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
            bar.close()
            metrics_file.close()
        self.save()

    def state_dict(self) -> dict[str, Any]:
        p = self.parts
        return {
            "policy": p.policy.state_dict(),
            "value": p.value.state_dict(),
            "updater": p.updater.state_dict(),
            "collector": p.collector.state_dict(),
            "iteration": self.iteration,
            "rng": checkpoint.rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save(self) -> Path:
        checkpoint.save_atomic(self.state_dict(), self.checkpoint_path)
        return self.checkpoint_path

    def load(self, path: Path | str) -> None:
        """Restores the learner state exactly, and the running episodes where the env backend allows
        (in-process envs); otherwise the envs continue from the fresh episodes they were reset to."""
        state = checkpoint.load(path)
        p = self.parts
        p.policy.load_state_dict(state["policy"])
        p.value.load_state_dict(state["value"])
        p.updater.load_state_dict(state["updater"])
        if not p.collector.load_state_dict(state["collector"]):
            print("resume: this env backend cannot restore running episodes; starting fresh ones", file=sys.stderr)
        if p.acting_policy is not p.policy:
            p.acting_policy.load_state_dict(p.policy.state_dict())
        self.iteration = state["iteration"]
        checkpoint.set_rng_state(state["rng"])
