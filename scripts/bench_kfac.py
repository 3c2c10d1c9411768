"""Cost of one K-FAC policy update against a plain gradient step on the same batch.

Both run on a Hopper-sized Gaussian policy (obs 11, act 3, 64×64 tanh) and the ACKTR default batch
(16 envs × 20 steps). A plain step is forward + policy-gradient loss + backward + SGD step. A K-FAC
update is the same forward (recorded) + loss + sampled-Fisher loss + ``KFAC.step``: gradients,
factor statistics, preconditioning, trust region and — amortized, since updates are timed in blocks
of ``inv_every`` — the eigendecomposition refresh. The exact-curvature variant adds the
Jacobian-vector product that sizes the step with the batch's exact Fisher (ACKTR's default); the
"sampled" variant sizes it with the batch's sampled Fisher and "kfac" with F̂. Repeats of the variants
are interleaved so that background load affects them alike; medians are reported.

    python scripts/bench_kfac.py [--batch 320] [--repeats 60] [--threads 1] [--device cpu] [--no-scaling]

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

from polopt.kfac import KFAC
from polopt.networks import make_policy
from polopt.updaters.acktr import (
    exact_curvature,
    kfac_blocks,
    policy_output_quadratic,
    sampled_fisher_loss_policy,
)
from polopt.updaters.vpg import policy_gradient_loss

TARGET_RATIO = 1.25  # the K-FAC overhead claimed for ACKTR: 10–25% over a plain gradient step


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(batch: int = 320, obs_dim: int = 11, action_dim: int = 3, hidden: tuple[int, ...] = (64, 64),
              repeats: int = 60, inv_every: int = 10, threads: int | None = 1, device: str = "cpu",
              seed: int = 0, scale: bool = True) -> dict[str, Any]:
    """Median seconds per update of each variant, and the ratios to the plain step.

    `threads` sets torch's intra-op threads for the measurement only (restored afterwards); `device`
    may be "auto" (CUDA when available). With `scale`, :func:`scaling` adds the ratios at larger sizes.
    """
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = _measure(batch, obs_dim, action_dim, hidden, repeats, inv_every, device, seed)
        result["scaling"] = scaling(obs_dim, action_dim, inv_every, device, seed) if scale else "skipped"
        return result
    finally:
        torch.set_num_threads(previous_threads)


# (batch, hidden) pairs for the scaling check: the default ACKTR batch and a TRPO-sized one, at Hopper's
# 64×64 and at 256×256.
SCALING_SIZES = ((320, (64, 64)), (2560, (64, 64)), (320, (256, 256)), (2560, (256, 256)))


def scaling(obs_dim: int, action_dim: int, inv_every: int, device: str, seed: int, repeats: int = 8) -> dict:
    """The K-FAC/plain ratios at larger batches and layers: per-op overhead shrinks there, so what is left
    is the arithmetic itself (the sampled-Fisher backward and the factor products cost about as much as
    the forward and backward of the plain step)."""
    rows = {}
    for batch, hidden in SCALING_SIZES:
        measured = _measure(batch, obs_dim, action_dim, hidden, repeats, inv_every, device, seed)
        rows[f"batch{batch}_hidden{'x'.join(map(str, hidden))}"] = {
            "plain_ms": 1e3 * measured["plain_step_s"],
            **{f"{source}_ratio": measured[f"kfac_{source}_ratio"] for source in ("kfac", "sampled", "exact")}}
    return rows


def _measure(batch: int, obs_dim: int, action_dim: int, hidden: tuple[int, ...], repeats: int, inv_every: int,
             device: str, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    box = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    policy = make_policy(box, gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32), hidden).to(dev)
    obs = torch.randn(batch, obs_dim, device=dev)
    actions = torch.randn(batch, action_dim, device=dev)
    advantages = torch.randn(batch, device=dev)
    initial = {k: v.clone() for k, v in policy.state_dict().items()}
    dist = policy.distribution
    sgd = torch.optim.SGD(policy.parameters(), lr=1e-3)
    optimizers = {source: KFAC(*kfac_blocks(policy), inv_every=inv_every, curvature=source)
                  for source in ("kfac", "sampled")}

    def plain() -> None:
        loss = policy_gradient_loss(dist.log_prob(policy(obs), actions), advantages)
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()

    def kfac_update(source: str) -> Callable[[], None]:
        optimizer = optimizers["sampled" if source == "exact" else source]
        exact = source == "exact"

        def update() -> None:
            with optimizer.record():
                params = policy(obs)
            loss = policy_gradient_loss(dist.log_prob(params, actions), advantages)
            curvature = exact_curvature(policy, obs, policy_output_quadratic(dist)) if exact else None
            optimizer.step(loss, sampled_fisher_loss_policy(policy, params), curvature)
        return update

    variants = {"plain_step_s": plain, **{f"kfac_{source}_update_s": kfac_update(source)
                                          for source in ("kfac", "sampled", "exact")}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats + 3):  # the first 3 rounds warm up (allocator, first eigendecompositions)
        for name, fn in variants.items():
            policy.load_state_dict(initial)  # every block starts from the same weights
            _synchronize(dev)
            start = time.perf_counter()
            for _ in range(inv_every):
                fn()
            _synchronize(dev)
            if repeat >= 3:
                times[name].append((time.perf_counter() - start) / inv_every)
    result: dict[str, Any] = {name: statistics.median(ts) for name, ts in times.items()}
    for source in ("kfac", "sampled", "exact"):
        result[f"kfac_{source}_ratio"] = result[f"kfac_{source}_update_s"] / result["plain_step_s"]
    result.update({"target_ratio": TARGET_RATIO, "batch": batch, "obs_dim": obs_dim, "action_dim": action_dim,
                   "hidden": "x".join(map(str, hidden)), "inv_every": inv_every, "repeats": repeats,
                   "threads": torch.get_num_threads(), "device": str(dev)})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--inv-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-scaling", action="store_true", help="skip the larger-size ratios")
    args = parser.parse_args()
    result = benchmark(batch=args.batch, repeats=args.repeats, inv_every=args.inv_every,
                       threads=args.threads or None, device=args.device, scale=not args.no_scaling)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
