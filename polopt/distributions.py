"""Action distributions that work on their *parameters*.

A policy network returns a small named tuple of distribution parameters; every operation
(sampling, log-probability, entropy, analytic KL and the closed-form Fisher of the distribution
with respect to its own parameters) is a pure function of those tuples. Storing the old
parameters in the batch therefore makes KL(π_old‖π) and the Fisher analytic, and the same code
serves sampling, the surrogate losses and the natural-gradient machinery.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from torch import Tensor


class GaussianParams(NamedTuple):
    """Diagonal Gaussian: ``mean`` and ``log_std``, both shaped [..., action_dim]."""

    mean: Tensor
    log_std: Tensor


class CategoricalParams(NamedTuple):
    """Categorical over n actions: unnormalized ``logits`` shaped [..., n]."""

    logits: Tensor


class Distribution(Protocol):
    """The operations every distribution family provides (all pure functions of parameters)."""

    def sample(self, params, generator: torch.Generator | None = None) -> Tensor: ...

    def mode(self, params) -> Tensor: ...

    def log_prob(self, params, actions: Tensor) -> Tensor: ...

    def entropy(self, params) -> Tensor: ...

    def kl(self, p, q) -> Tensor: ...

    def fisher_vector_product(self, params, vector): ...


_LOG_2PI = math.log(2.0 * math.pi)


class DiagGaussian:
    """Diagonal Gaussian with a (typically state-independent) log standard deviation."""

    def sample(self, params: GaussianParams, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(params.mean.shape, generator=generator, dtype=params.mean.dtype,
                            device=params.mean.device)
        return params.mean + params.log_std.exp() * noise

    def mode(self, params: GaussianParams) -> Tensor:
        return params.mean

    def log_prob(self, params: GaussianParams, actions: Tensor) -> Tensor:
        """log N(a; μ, σ²) = −Σ_i [ (a_i − μ_i)² / (2σ_i²) + log σ_i + ½ log 2π ]."""
        z = (actions - params.mean) * torch.exp(-params.log_std)
        return -(0.5 * z.pow(2) + params.log_std + 0.5 * _LOG_2PI).sum(-1)

    def entropy(self, params: GaussianParams) -> Tensor:
        """H = Σ_i (log σ_i + ½ log 2πe)."""
        log_std = params.log_std.expand_as(params.mean)
        return (log_std + 0.5 * (_LOG_2PI + 1.0)).sum(-1)

    def kl(self, p: GaussianParams, q: GaussianParams) -> Tensor:
        """KL(p‖q) = Σ_i [ log σq/σp + (σp² + (μp − μq)²) / (2σq²) − ½ ]."""
        var_ratio = torch.exp(2.0 * (p.log_std - q.log_std))
        mean_term = ((p.mean - q.mean) * torch.exp(-q.log_std)).pow(2)
        return (0.5 * (var_ratio + mean_term - 1.0) - (p.log_std - q.log_std)).sum(-1)

    def fisher_vector_product(self, params: GaussianParams, vector: GaussianParams) -> GaussianParams:
        """Closed-form Fisher w.r.t. (μ, log σ) times a vector: diag(1/σ², 2) per dimension."""
        inv_var = torch.exp(-2.0 * params.log_std)
        return GaussianParams(vector.mean * inv_var, 2.0 * vector.log_std)


class Categorical:
    """Categorical distribution parameterized by logits."""

    def sample(self, params: CategoricalParams, generator: torch.Generator | None = None) -> Tensor:
        probs = torch.softmax(params.logits, dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])

    def mode(self, params: CategoricalParams) -> Tensor:
        return params.logits.argmax(-1)

    def log_prob(self, params: CategoricalParams, actions: Tensor) -> Tensor:
        log_probs = torch.log_softmax(params.logits, dim=-1)
        return log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params: CategoricalParams) -> Tensor:
        """H = −Σ_k p_k log p_k."""
        log_probs = torch.log_softmax(params.logits, dim=-1)
        return -(log_probs.exp() * log_probs).sum(-1)

    def kl(self, p: CategoricalParams, q: CategoricalParams) -> Tensor:
        """KL(p‖q) = Σ_k p_k (log p_k − log q_k)."""
        log_p = torch.log_softmax(p.logits, dim=-1)
        log_q = torch.log_softmax(q.logits, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    def fisher_vector_product(self, params: CategoricalParams,
                              vector: CategoricalParams) -> CategoricalParams:
        """Closed-form Fisher w.r.t. the logits times a vector: (diag(p) − ppᵀ) v."""
        probs = torch.softmax(params.logits, dim=-1)
        pv = (probs * vector.logits).sum(-1, keepdim=True)
        return CategoricalParams(probs * vector.logits - probs * pv)
