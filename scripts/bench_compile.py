"""Does torch.compile pay for polopt's minibatch steps? Eager vs compiled, on the same data.

Two hot loops of the first-order updaters, each timed as a whole pass over a 2048-sample batch:

- ``value_fit``: the critic's 10 epochs × 16 minibatches of ½(V(s) − R)² with Adam (TRPO/NPG/VPG);
- ``ppo_epochs``: PPO-clip's 10 epochs × 32 minibatches of the clipped loss with the value loss.

The compiled variant wraps the loss function in ``torch.compile`` (forward and backward are then
generated kernels); the optimizer step stays the same fused Adam. Compile time is the first call's
extra seconds. Medians over repeats are reported in milliseconds.

    python scripts/bench_compile.py [--repeats 5] [--threads 1]

Prints a JSON dict; :func:`benchmark` returns it for other scripts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from polopt.batch import shuffled_minibatches
from polopt.networks import make_policy, make_value
from polopt.optim import GuardedAdam
from polopt.updaters.ppo_losses import clipped_surrogate_loss, probability_ratio


def _problem(batch: int) -> dict[str, Any]:
    box = gym.spaces.Box(-np.inf, np.inf, (11,), np.float32)
    policy = make_policy(box, gym.spaces.Box(-1.0, 1.0, (3,), np.float32))
    value = make_value(box, policy.obs_normalizer)
    obs, actions = torch.randn(batch, 11), torch.randn(batch, 3)
    with torch.no_grad():
        old_log_prob = policy.distribution.log_prob(policy(obs), actions)
    return {"policy": policy, "value": value, "obs": obs, "actions": actions, "old_log_prob": old_log_prob,
            "advantages": torch.randn(batch), "returns": torch.randn(batch)}


def _passes(loss_fn: Callable[..., torch.Tensor], params: list[torch.nn.Parameter], data: list[torch.Tensor],
            epochs: int, minibatches: int) -> Callable[[], None]:
    optimizer = GuardedAdam(params, 1e-4)
    no_skip = torch.zeros(())

    def run() -> None:
        for _ in range(epochs):
            for minibatch in shuffled_minibatches(data, minibatches):
                loss = loss_fn(*minibatch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.guarded_step(no_skip)
    return run


def _variants(p: dict[str, Any]) -> dict[str, tuple[Callable[..., torch.Tensor], list, list, int, int]]:
    policy, value = p["policy"], p["value"]

    def value_loss(obs: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        return 0.5 * (value(obs) - returns).pow(2).mean()

    def ppo_loss(obs: torch.Tensor, actions: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                 returns: torch.Tensor) -> torch.Tensor:
        ratio = probability_ratio(policy.distribution.log_prob(policy(obs), actions), old_log_prob)
        return clipped_surrogate_loss(ratio, advantages, 0.2) + 0.5 * value_loss(obs, returns)

    both = [*policy.parameters(), *value.parameters()]
    return {"value_fit": (value_loss, list(value.parameters()), [p["obs"], p["returns"]], 10, 16),
            "ppo_epochs": (ppo_loss, both, [p["obs"], p["actions"], p["old_log_prob"], p["advantages"],
                                            p["returns"]], 10, 32)}


def benchmark(batch: int = 2048, repeats: int = 5, threads: int | None = 1) -> dict[str, Any]:
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result: dict[str, Any] = {}
        for name, (loss_fn, params, data, epochs, minibatches) in _variants(_problem(batch)).items():
            eager = _passes(loss_fn, params, data, epochs, minibatches)
            compiled = _passes(torch.compile(loss_fn, dynamic=False), params, data, epochs, minibatches)
            start = time.perf_counter()
            compiled()  # compiles
            first = time.perf_counter() - start
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            for _ in range(repeats):  # interleaved, so background load hits both alike
                for variant, run in (("eager", eager), ("compiled", compiled)):
                    start = time.perf_counter()
                    run()
                    times[variant].append(time.perf_counter() - start)
            eager_ms, compiled_ms = (1e3 * statistics.median(times[v]) for v in ("eager", "compiled"))
            result[name] = {"eager_ms": eager_ms, "compiled_ms": compiled_ms, "speedup": eager_ms / compiled_ms,
                            "compile_s": first - compiled_ms / 1e3, "steps": epochs * minibatches}
        result.update({"batch": batch, "repeats": repeats, "threads": torch.get_num_threads(),
                       "torch": torch.__version__})
        return result
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    print(json.dumps(benchmark(repeats=args.repeats, threads=args.threads or None), indent=2))


if __name__ == "__main__":
    main()
