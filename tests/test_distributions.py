"""Distributions on parameters: KL, entropy, log-prob and the closed-form Fisher against explicit computation."""

from __future__ import annotations

import pytest
import torch

from polopt.distributions import Categorical, CategoricalParams, DiagGaussian, GaussianParams

F64 = torch.float64


def gaussian(seed, batch=4, dim=3):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, dim, generator=g, dtype=F64)
    return GaussianParams(mean, 0.3 * torch.randn(batch, dim, generator=g, dtype=F64))


def categorical(seed, batch=4, n=5):
    g = torch.Generator().manual_seed(seed)
    return CategoricalParams(torch.randn(batch, n, generator=g, dtype=F64))


FAMILIES = [(DiagGaussian(), gaussian), (Categorical(), categorical)]


@pytest.mark.parametrize(("dist", "make"), FAMILIES)
def test_kl_of_a_distribution_with_itself_is_zero(dist, make):
    p = make(0)
    torch.testing.assert_close(dist.kl(p, p), torch.zeros(4, dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize(("dist", "make"), FAMILIES)
def test_kl_matches_monte_carlo(dist, make):
    p, q = make(1, batch=1), make(2, batch=1)
    expanded_p = type(p)(*(t.expand(200_000, *t.shape[1:]) for t in p))
    expanded_q = type(q)(*(t.expand(200_000, *t.shape[1:]) for t in q))
    samples = dist.sample(expanded_p, generator=torch.Generator().manual_seed(0))
    monte_carlo = (dist.log_prob(expanded_p, samples) - dist.log_prob(expanded_q, samples)).mean()
    torch.testing.assert_close(dist.kl(p, q)[0], monte_carlo, rtol=5e-2, atol=0)


@pytest.mark.parametrize(("dist", "make"), FAMILIES)
def test_entropy_matches_negative_expected_log_prob(dist, make):
    p = make(3, batch=1)
    expanded = type(p)(*(t.expand(200_000, *t.shape[1:]) for t in p))
    samples = dist.sample(expanded, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(dist.entropy(p)[0], -dist.log_prob(expanded, samples).mean(), rtol=2e-2, atol=0)


def test_log_prob_and_entropy_match_torch_distributions():
    p = gaussian(4)
    actions = torch.randn(4, 3, dtype=F64)
    reference = torch.distributions.Normal(p.mean, p.log_std.exp())
    torch.testing.assert_close(DiagGaussian().log_prob(p, actions), reference.log_prob(actions).sum(-1))
    torch.testing.assert_close(DiagGaussian().entropy(p), reference.entropy().sum(-1))
    c = categorical(5)
    a = torch.tensor([0, 4, 2, 1])
    ref_c = torch.distributions.Categorical(logits=c.logits)
    torch.testing.assert_close(Categorical().log_prob(c, a), ref_c.log_prob(a))
    torch.testing.assert_close(Categorical().entropy(c), ref_c.entropy())


def flat_fisher_from_kl_hessian(dist, p):
    """Hessian of q ↦ KL(p‖q) at q = p, over the flattened parameters of one sample."""
    shapes = [t.shape for t in p]
    sizes = [t.numel() for t in p]
    flat_p = torch.cat([t.reshape(-1) for t in p])

    def kl_of_flat(flat_q):
        pieces = torch.split(flat_q, sizes)
        q = type(p)(*(piece.reshape(shape) for piece, shape in zip(pieces, shapes, strict=True)))
        return dist.kl(p, q).sum()

    return torch.autograd.functional.hessian(kl_of_flat, flat_p)


@pytest.mark.parametrize(("dist", "make"), FAMILIES)
def test_closed_form_fisher_equals_hessian_of_kl(dist, make):
    p = make(6, batch=1)
    hessian = flat_fisher_from_kl_hessian(dist, p)
    basis = torch.eye(hessian.shape[0], dtype=F64)
    sizes = [t.numel() for t in p]
    columns = []
    for e in basis:
        v = type(p)(*(piece.reshape(t.shape) for piece, t in zip(torch.split(e, sizes), p, strict=True)))
        columns.append(torch.cat([t.reshape(-1) for t in dist.fisher_vector_product(p, v)]))
    torch.testing.assert_close(torch.stack(columns, 1), hessian, atol=1e-10, rtol=1e-8)


def test_gaussian_fisher_blocks_are_inverse_variance_and_two():
    p = GaussianParams(torch.zeros(1, 2), torch.log(torch.tensor([[0.5, 2.0]])))
    out = DiagGaussian().fisher_vector_product(p, GaussianParams(torch.ones(1, 2), torch.ones(1, 2)))
    torch.testing.assert_close(out.mean, torch.tensor([[4.0, 0.25]]))
    torch.testing.assert_close(out.log_std, torch.tensor([[2.0, 2.0]]))


def test_sampling_is_reproducible_with_a_generator():
    p = gaussian(7)
    a = DiagGaussian().sample(p, generator=torch.Generator().manual_seed(9))
    b = DiagGaussian().sample(p, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    c = categorical(8)
    samples = Categorical().sample(c, generator=torch.Generator().manual_seed(9))
    assert samples.shape == (4,) and samples.dtype == torch.long
