"""Fisher-vector products (F + λI)·v of a policy at θ_old on one batch of states.

F is the Fisher information of π_θ(·|s) averaged over the batch, which equals the Hessian of the
mean KL(π_old‖π_θ) at θ = θ_old (Kakade 2001; Schulman et al. 2015, "Trust Region Policy
Optimization", appendix C):

    F = (1/B) Σ_b J_bᵀ M_b J_b,

with J_b = ∂(distribution parameters at s_b)/∂θ and M_b the closed-form Fisher of the distribution
w.r.t. its own parameters (polopt.distributions). A backend is configured once (damping λ, subsample
fraction) and bound to each batch; the bound operator maps a flat v ∈ ℝⁿ to (F + λI)v.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from polopt.natural_gradient.autograd_jacobian import AutogradJacobian
from polopt.natural_gradient.flat_params import flatten, trainable_parameters, unflatten
from polopt.natural_gradient.linear_jacobians import BufferPool, LinearJacobians, record_linear_jacobians
from polopt.networks import Policy


class FisherOperator(Protocol):
    """v ↦ (F + λI)v for one batch; ``num_samples`` is how many states F was averaged over."""

    num_samples: int

    def __call__(self, vector: Tensor) -> Tensor: ...


class FisherBackend(Protocol):
    def bind(self, policy: Policy, obs: Tensor, old_params: Any) -> FisherOperator: ...


def subsample_states(obs: Tensor, old_params: Any, fraction: float) -> tuple[Tensor, Any]:
    """A uniformly random round(fraction·B) of the states (at least one); all of them for fraction ≥ 1."""
    size = obs.shape[0]
    if fraction >= 1.0:
        return obs, old_params
    count = max(1, round(fraction * size))
    idx = torch.randperm(size, device=obs.device)[:count]
    return obs[idx], type(old_params)(*(t[idx] for t in old_params))


def _detached(params: Any) -> Any:
    return type(params)(*(t.detach() for t in params))


class DirectFisher:
    """The classic route: Hessian-vector product of the mean KL(π_old‖π_θ) by double backprop.

    ∇_θ KL is built once per batch with ``create_graph``; each product is ∇_θ(∇_θ KL · v).
    """

    def __init__(self, damping: float = 0.1, subsample: float = 1.0):
        self.damping = damping
        self.subsample = subsample

    def bind(self, policy: Policy, obs: Tensor, old_params: Any) -> _DirectOperator:
        obs, old_params = subsample_states(obs, old_params, self.subsample)
        params = list(trainable_parameters(policy).values())
        kl = policy.distribution.kl(_detached(old_params), policy(obs)).mean()
        kl_grad = flatten(torch.autograd.grad(kl, params, create_graph=True, materialize_grads=True))
        return _DirectOperator(params, kl_grad, self.damping, obs.shape[0])


class _DirectOperator:
    def __init__(self, params: list[nn.Parameter], kl_grad: Tensor, damping: float, num_samples: int):
        self.params = params
        self.kl_grad = kl_grad
        self.damping = damping
        self.num_samples = num_samples

    def __call__(self, vector: Tensor) -> Tensor:
        hvp = torch.autograd.grad(self.kl_grad @ vector, self.params, retain_graph=True,
                                  materialize_grads=True)
        return flatten(hvp) + self.damping * vector


class AnalyticFisher:
    """(1/B) Σ_b J_bᵀ M_b J_b v + λv with M_b in closed form: one JVP, the Fisher M, one VJP.

    The Jacobian pieces at θ_old are computed once per batch and reused by every product (they do
    not change during CG): for each nn.Linear layer, its input h and the per-state Jacobian
    D = ∂(distribution parameters)/∂(layer output), so Jv = Σ D(dW h + db) and Jᵀu = ((Dᵀu)hᵀ, Dᵀu)
    summed over states (polopt.natural_gradient.linear_jacobians). Parameters outside such layers
    (the Gaussian log-std; all of them with ``cache_layer_jacobians=False``) go through autograd,
    with the double-backward trick for Jv (polopt.natural_gradient.autograd_jacobian). On a
    Hopper-sized 64×64 policy and 2048 states a product costs about half of DirectFisher's
    (scripts/bench_fvp.py).

    The cached pieces live in buffers reused from one batch to the next, so an operator is valid
    until the backend is bound again (using it afterwards raises).
    """

    def __init__(self, damping: float = 0.1, subsample: float = 1.0, cache_layer_jacobians: bool = True):
        self.damping = damping
        self.subsample = subsample
        self.cache_layer_jacobians = cache_layer_jacobians
        self.pool = BufferPool()

    def bind(self, policy: Policy, obs: Tensor, old_params: Any) -> _AnalyticOperator:
        obs, old_params = subsample_states(obs, old_params, self.subsample)
        params = list(trainable_parameters(policy).values())
        layers = record_linear_jacobians(policy, obs, params, self.pool, self.cache_layer_jacobians)
        return _AnalyticOperator(policy.distribution, _detached(old_params), params, layers, self.damping)


class _AnalyticOperator:
    def __init__(self, distribution: Any, old_params: Any, params: list[nn.Parameter],
                 layers: LinearJacobians, damping: float):
        self.distribution = distribution
        self.old_params = old_params
        self.params = params
        self.layers = layers
        self.damping = damping
        self.num_samples = layers.num_samples
        self.field_shapes = [t.shape for t in old_params]
        covered = {i for layer in layers.layers for i in layer.param_indices}
        self.rest = AutogradJacobian(layers.outputs, params, [i for i in range(len(params)) if i not in covered])

    def __call__(self, vector: Tensor) -> Tensor:
        tangents = unflatten(vector, self.params)
        cotangent = self._output_fisher(self._jvp(tangents))
        grads = self.layers.vjp(cotangent, len(self.params))
        self.rest.vjp(cotangent, grads)
        full = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params, strict=True)]
        return flatten(full) / self.num_samples + self.damping * vector

    def _jvp(self, tangents: list[Tensor]) -> Tensor:
        parts = [jv for jv in (self.layers.jvp(tangents), self.rest.jvp(tangents)) if jv is not None]
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def _output_fisher(self, jv: Tensor) -> Tensor:
        """M_b (J v)_b per state, on the flattened distribution parameters [B, K]."""
        sizes = [shape[1:].numel() for shape in self.field_shapes]
        fields = [t.reshape(shape) for t, shape in zip(jv.split(sizes, 1), self.field_shapes, strict=True)]
        product = self.distribution.fisher_vector_product(self.old_params, type(self.old_params)(*fields))
        return torch.cat([t.reshape(jv.shape[0], -1) for t in product], 1)
