"""K-FAC arithmetic as small pure functions (Martens & Grosse 2015; Wu et al. 2017, ACKTR).

Notation. A Linear layer computes s = W ā with ā = [a; 1] (the appended 1 carries the bias, so W
here is the weight with the bias as its last column, shape [out, in + 1]). For a model p(y|x) and
g = ∂ log p(y|x) / ∂s, the gradient of log p w.r.t. W is g āᵀ, and with the column-stacking vec,
vec(g āᵀ) = ā ⊗ g. The layer's Fisher block is therefore E[ā āᵀ ⊗ g gᵀ]; K-FAC approximates it by
A ⊗ G with A = E[ā āᵀ] and G = E[g gᵀ] (y sampled from the model: the *sampled* Fisher). Since
(A ⊗ G) vec(X) = vec(G X A) for symmetric A, the preconditioned gradient is G⁻¹ ∇W A⁻¹.
"""

from __future__ import annotations

import torch
from torch import Tensor


def augment(inputs: Tensor, bias: bool = True) -> Tensor:
    """ā = [a, 1] per row ([B, in] → [B, in + 1]); unchanged for a layer without bias."""
    if not bias:
        return inputs
    return torch.cat([inputs, inputs.new_ones(*inputs.shape[:-1], 1)], dim=-1)  # a third of F.pad's cost here


def second_moment(x: Tensor) -> Tensor:
    """E[x xᵀ] over the rows of x [B, n]: xᵀx / B (an A or G factor of one batch)."""
    return x.mT @ x / x.shape[0]


def ema_second_moment(average: Tensor | None, x: Tensor, decay: float) -> Tensor:
    """decay · average + (1 − decay) · xᵀx / B as one fused addmm (a new tensor; `average` is untouched).

    With no average yet (the first batch) the batch moment itself starts the average.
    """
    if average is None:
        return second_moment(x)
    return torch.addmm(average, x.mT, x, beta=decay, alpha=(1.0 - decay) / x.shape[0])


def pi_correction(a: Tensor, g: Tensor, eps: float = 1e-12) -> Tensor:
    """π = √((tr A / dim A) / (tr G / dim G)) (Martens & Grosse 2015, §6.3).

    Splitting damping λ as (A + π√λ I) ⊗ (G + √λ/π I) keeps both shifts in proportion to the average
    eigenvalue of their factor, which minimizes the norm of the cross terms the split introduces.
    """
    mean_a = torch.diagonal(a).mean().clamp_min(eps)
    mean_g = torch.diagonal(g).mean().clamp_min(eps)
    return torch.sqrt(mean_a / mean_g)


def split_damping(a: Tensor, g: Tensor, damping: float, use_pi: bool = True) -> tuple[Tensor, Tensor]:
    """Shifts (c_A, c_G) with c_A · c_G = λ: (π√λ, √λ/π), or (√λ, √λ) without π-correction."""
    root = damping**0.5
    pi = pi_correction(a, g) if use_pi else torch.ones((), dtype=a.dtype, device=a.device)
    return pi * root, root / pi


def damped_inverse(factor: Tensor, shift: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(M + cI)⁻¹ via the eigendecomposition M = Q diag(d) Qᵀ: Q diag(1 / (d + c)) Qᵀ.

    Eigenvalues are clamped at 0 because a second-moment matrix is positive semi-definite and rounding
    can make tiny ones negative; the shift c then bounds the condition number by (λ_max + c) / c, so
    float32 is accurate enough and runs about twice as fast. If the float32 decomposition does not
    converge it is retried in float64. Returns (inverse, damped factor M + cI, condition number of
    M + cI) in the factor's dtype; raises torch.linalg.LinAlgError when float64 fails too.
    """
    try:
        eigenvalues, eigenvectors = torch.linalg.eigh(factor)
    except torch.linalg.LinAlgError:
        eigenvalues, eigenvectors = torch.linalg.eigh(factor.double())
    shift = shift.to(eigenvalues.dtype)
    damped_eigenvalues = eigenvalues.clamp_min(0.0) + shift
    inverse = (eigenvectors / damped_eigenvalues) @ eigenvectors.mT
    damped = (eigenvectors * damped_eigenvalues) @ eigenvectors.mT
    condition = damped_eigenvalues.max() / damped_eigenvalues.min()
    return inverse.to(factor.dtype), damped.to(factor.dtype), condition.to(factor.dtype)


def precondition(grad: Tensor, a_inverse: Tensor, g_inverse: Tensor) -> Tensor:
    """(A ⊗ G)⁻¹ vec(∇W) in matrix form: G⁻¹ ∇W A⁻¹ (∇W shaped [out, in + 1])."""
    return g_inverse @ grad @ a_inverse


def kronecker_quadratic(direction: Tensor, a: Tensor, g: Tensor) -> Tensor:
    """vec(Δ)ᵀ (A ⊗ G) vec(Δ) = ⟨Δ, G Δ A⟩ (Frobenius inner product)."""
    return (direction * (g @ direction @ a)).sum()


def step_scale(quadratic: Tensor, descent: Tensor, lr: float, kl_clip: float | None = None,
               rescale: bool = False) -> Tensor:
    """Step size η for the update −η·d, given q = dᵀFd and the directional derivative gᵀd.

    η = min(lr, √(2κ / q)) when a KL clip κ is set: the predicted KL ½ η² q is then at most κ (ACKTR,
    Wu et al. 2017). ACKTR's reference code bounds η² q (twice the predicted KL) by κ; here κ bounds
    the predicted KL itself. With ``rescale`` η is also capped by the minimizer of the quadratic model
    −η gᵀd + ½ η² q, i.e. α* = gᵀd / q (Martens & Grosse 2015, §6.4), which keeps block-diagonal
    curvature from overshooting when the loss itself is quadratic in the outputs (the critic).
    """
    tiny = torch.finfo(quadratic.dtype).tiny
    scale = torch.full_like(quadratic, lr)
    if kl_clip is not None:
        scale = torch.minimum(scale, torch.sqrt(2.0 * kl_clip / quadratic.clamp_min(tiny)))
    if rescale:
        scale = torch.minimum(scale, descent.clamp_min(0.0) / quadratic.clamp_min(tiny))
    return scale
