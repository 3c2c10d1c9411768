"""Cost of the Fisher-vector product backends and of one whole TRPO policy update.

Hopper-sized Gaussian policy (obs 11, act 3, 64×64 tanh), 2048 states. For each backend: binding
it to the batch (the once-per-update setup), one product (median over blocks of ``products``), and
one CG solve as an update runs it (bind + ``cg_iters`` products + the sᵀFs product). Variants:

- ``analytic``: JᵀMJv with the per-layer Jacobian pieces cached at bind (polopt's default);
- ``analytic_autograd``: the same product by the double-backward trick alone (no cached pieces);
- ``torch_func``: the same product by torch.func.jvp + a reused torch.func.vjp (reference only);
- ``direct``: Hessian-vector product of the mean KL by double backprop (the classic route).

The whole TRPO policy update (gradient, bind, CG, line search, diagnostics; no value fit) is timed
with the analytic and the direct backend. Repeats interleave the variants so that background load
hits them alike; medians of wall-clock and of process CPU time are reported, in milliseconds.

    python scripts/bench_fvp.py [--repeats 30] [--threads 1] [--device cpu]

Prints a JSON dict; :func:`benchmark` returns it for other scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch.func import functional_call, jvp, vjp

from polopt.batch import Batch
from polopt.natural_gradient.fisher import AnalyticFisher, DirectFisher
from polopt.natural_gradient.flat_params import flatten, trainable_parameters, unflatten
from polopt.natural_gradient.solvers import ConjugateGradientSolver
from polopt.natural_gradient.step_rules import BacktrackingLineSearch, KLNormalizedStep
from polopt.networks import make_policy, make_value
from polopt.updaters.natural_gradient import NaturalGradient
from polopt.value import ValueFitter

TARGET_RATIO = 2.0  # the analytic product must be at least twice as fast as the direct one


class TorchFuncFisher:
    """JᵀMJv by torch.func: a fresh jvp per product and a vjp function built once per bind."""

    def __init__(self, damping: float = 0.1):
        self.damping = damping

    def bind(self, policy, obs, old_params):
        params = trainable_parameters(policy)
        like = list(params.values())
        theta = flatten(like).detach()

        def outputs(flat):
            return functional_call(policy, dict(zip(params, unflatten(flat, like), strict=True)), (obs,))

        _, vjp_fn = vjp(outputs, theta)

        def product(v):
            _, jv = jvp(outputs, (theta,), (v,))
            (jtmjv,) = vjp_fn(policy.distribution.fisher_vector_product(old_params, jv))
            return jtmjv / obs.shape[0] + self.damping * v

        return product


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def _time_backend(backend, policy, data: Batch, vector: torch.Tensor, solver: ConjugateGradientSolver,
                  products: int, sync: Callable[[], None]) -> list[tuple[str, tuple[float, float], int]]:
    """One round for one backend: bind; a block of products; a fresh bind + CG solve + sᵀFs."""
    bound: list[Callable] = []
    bind = _timed(lambda: bound.append(backend.bind(policy, data.obs, data.old_params)), sync)
    block = _timed(lambda: [bound[0](vector) for _ in range(products)], sync)

    def solve():
        operator = backend.bind(policy, data.obs, data.old_params)
        direction = solver(operator, vector).direction
        return direction @ operator(direction)

    return [("bind", bind, 1), ("product", block, products), ("cg_solve", _timed(solve, sync), 1)]


def _problem(batch: int, obs_dim: int, action_dim: int, hidden: tuple[int, ...], device: torch.device):
    box = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    policy = make_policy(box, gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32), hidden).to(device)
    value = make_value(box, policy.obs_normalizer, hidden).to(device)
    obs = torch.randn(batch, obs_dim, device=device)
    with torch.no_grad():  # copies, as the rollout makes them: log-std is a view of the live parameter
        old_params = type(params := policy(obs))(*(t.clone() for t in params))
        actions = policy.distribution.sample(old_params)
        old_log_prob = policy.distribution.log_prob(old_params, actions)
    advantages = torch.randn(batch, device=device)
    data = Batch(obs, actions, old_params, old_log_prob, advantages, torch.randn(batch, device=device),
                 torch.zeros(batch, device=device))
    return policy, value, data


def benchmark(batch: int = 2048, obs_dim: int = 11, action_dim: int = 3, hidden: tuple[int, ...] = (64, 64),
              repeats: int = 30, products: int = 10, cg_iters: int = 10, threads: int | None = 1,
              device: str = "cpu", seed: int = 0) -> dict:
    """Median milliseconds per bind, product, CG solve and TRPO policy update, and the ratios."""
    if threads:
        torch.set_num_threads(threads)
    load_start = os.getloadavg()[0]
    torch.manual_seed(seed)
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    policy, value, data = _problem(batch, obs_dim, action_dim, hidden, dev)
    n = sum(p.numel() for p in policy.parameters())
    vector = torch.randn(n, device=dev)
    backends = {"analytic": AnalyticFisher(0.1), "analytic_autograd": AnalyticFisher(0.1, 1.0, False),
                "torch_func": TorchFuncFisher(0.1), "direct": DirectFisher(0.1)}
    solver = ConjugateGradientSolver(cg_iters, 0.0)
    samples: dict[str, list[float]] = {}

    def record(name: str, timing: tuple[float, float], per: int = 1) -> None:
        samples.setdefault(f"{name}_wall", []).append(timing[0] / per)
        samples.setdefault(f"{name}_cpu", []).append(timing[1] / per)

    initial = {k: v.clone() for k, v in policy.state_dict().items()}
    updaters = {name: NaturalGradient(policy, value, lambda v: ValueFitter(v), backends[name], solver,
                                      BacktrackingLineSearch(KLNormalizedStep(0.01), 0.01, 0.8, 10))
                for name in ("analytic", "direct")}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for name, backend in backends.items():
            for part, timing, per in _time_backend(backend, policy, data, vector, solver, products, sync):
                record(f"{name}/{part}", timing, per)
        for name, updater in updaters.items():
            policy.load_state_dict(initial)
            record(f"trpo_policy_update/{name}", _timed(lambda u=updater: u.policy_step(data), sync))
    medians = {key: _median_ms(values[1:]) for key, values in samples.items()}
    result: dict = {"settings": {"batch": batch, "obs_dim": obs_dim, "action_dim": action_dim,
                                 "hidden": list(hidden), "parameters": n, "repeats": repeats,
                                 "products_per_block": products, "cg_iters": cg_iters, "device": str(dev),
                                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                                 "load_average_1min": [load_start, os.getloadavg()[0]]},
                    "median_ms": medians}
    direct, analytic = medians["direct/product_wall"], medians["analytic/product_wall"]
    result["ratios"] = {
        "direct_over_analytic_product_wall": direct / analytic,
        "direct_over_analytic_product_cpu": medians["direct/product_cpu"] / medians["analytic/product_cpu"],
        "direct_over_analytic_cg_solve_wall": medians["direct/cg_solve_wall"] / medians["analytic/cg_solve_wall"],
        "direct_over_analytic_trpo_update_wall": (medians["trpo_policy_update/direct_wall"]
                                                  / medians["trpo_policy_update/analytic_wall"]),
    }
    result["analytic_at_least_2x_faster_per_product"] = direct / analytic >= TARGET_RATIO
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(json.dumps(benchmark(batch=args.batch, repeats=args.repeats, threads=args.threads or None,
                               device=args.device), indent=2))


if __name__ == "__main__":
    main()
