"""K-FAC: factors, Kronecker blocks, damping, preconditioning, trust region and non-finite guards.

Every check compares against an explicit computation in float64: per-sample Python loops for the
factors, torch.kron for the blocks, Jacobians for exact Fisher blocks, torch.linalg.solve for the
preconditioned gradient.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from polopt.guards import NonFiniteError
from polopt.kfac import KFAC, DampedInverse, DiagonalBlock
from polopt.kfac_math import (
    augment,
    damped_inverse,
    ema_second_moment,
    kronecker_quadratic,
    pi_correction,
    precondition,
    second_moment,
    split_damping,
    step_scale,
)

DTYPE = torch.float64


def col_vec(matrix: torch.Tensor) -> torch.Tensor:
    """Column-stacking vec, the convention under which the layer block is kron(A, G)."""
    return matrix.mT.reshape(-1)


def make_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DTYPE)


def make_data(batch: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, generator=gen, dtype=DTYPE)
    targets = torch.randint(0, 3, (batch,), generator=gen)
    return x, targets


def log_likelihood(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)


def per_sample_output_grads(net: nn.Sequential, x: torch.Tensor, targets: torch.Tensor):
    """Reference loop: inputs ā and ∂ log p(y_i|x_i)/∂s of both layers, one sample at a time."""
    a_bars: list[list[torch.Tensor]] = [[], []]
    grads: list[list[torch.Tensor]] = [[], []]
    for xi, yi in zip(x, targets, strict=True):
        s1 = net[0](xi)
        h = torch.tanh(s1)
        s2 = net[2](h)
        g1, g2 = torch.autograd.grad(torch.log_softmax(s2, -1)[yi], [s1, s2])
        for k, (inp, g) in enumerate(((xi, g1), (h.detach(), g2))):
            a_bars[k].append(torch.cat([inp, torch.ones(1, dtype=DTYPE)]))
            grads[k].append(g)
    return a_bars, grads


def outer_mean(vectors: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.outer(v, v) for v in vectors) / len(vectors)


def kfac_update(kfac: KFAC, net: nn.Module, x: torch.Tensor, targets: torch.Tensor, loss_targets=None):
    """One K-FAC step with a fixed 'sampled' target set (so the test knows the Fisher targets)."""
    with kfac.record():
        logits = net(x)
    loss_targets = targets if loss_targets is None else loss_targets
    loss = -log_likelihood(logits, loss_targets).mean()
    return kfac.step(loss, log_likelihood(logits, targets).sum())


# --- pure functions ---------------------------------------------------------------------------

def test_augment_and_second_moment_match_a_loop():
    x = torch.randn(5, 3, dtype=DTYPE)
    a_bar = augment(x)
    assert torch.equal(a_bar[:, :3], x) and torch.equal(a_bar[:, 3], torch.ones(5, dtype=DTYPE))
    assert torch.equal(augment(x, bias=False), x)
    torch.testing.assert_close(second_moment(a_bar), outer_mean(list(a_bar)))


def test_ema_second_moment_is_the_moving_average():
    old = torch.randn(3, 3, dtype=DTYPE)
    x = torch.randn(7, 3, dtype=DTYPE)
    expected = 0.9 * old + 0.1 * outer_mean(list(x))
    torch.testing.assert_close(ema_second_moment(old, x, 0.9), expected)
    torch.testing.assert_close(ema_second_moment(None, x, 0.9), outer_mean(list(x)))


def test_pi_correction_and_split_damping():
    a = torch.diag(torch.tensor([4.0, 2.0, 0.0], dtype=DTYPE))   # mean eigenvalue 2
    g = torch.diag(torch.tensor([0.5, 0.0], dtype=DTYPE))        # mean eigenvalue 0.25
    pi = pi_correction(a, g)
    assert pi.item() == pytest.approx(math.sqrt(2.0 / 0.25))
    shift_a, shift_g = split_damping(a, g, 1e-2, use_pi=True)
    assert (shift_a * shift_g).item() == pytest.approx(1e-2)
    assert shift_a.item() == pytest.approx(pi.item() * 0.1)
    plain_a, plain_g = split_damping(a, g, 1e-2, use_pi=False)
    assert plain_a.item() == pytest.approx(0.1) and plain_g.item() == pytest.approx(0.1)


def test_damped_inverse_matches_dense_inverse_and_condition_number():
    m = torch.randn(6, 4, dtype=DTYPE)
    factor = m @ m.mT                      # rank 4 of 6: singular without damping
    shift = torch.tensor(0.3, dtype=DTYPE)
    inverse, damped, condition = damped_inverse(factor, shift)
    dense = factor + 0.3 * torch.eye(6, dtype=DTYPE)
    torch.testing.assert_close(damped, dense)
    torch.testing.assert_close(inverse, torch.linalg.inv(dense))
    torch.testing.assert_close(condition, torch.linalg.cond(dense))


def test_kronecker_product_identity():
    """vec(G X A) = kron(A, G) vec(X) (column-stacking vec), so ⟨X, G X A⟩ = vec(X)ᵀ kron(A, G) vec(X)."""
    a = second_moment(torch.randn(8, 4, dtype=DTYPE))
    g = second_moment(torch.randn(8, 3, dtype=DTYPE))
    x = torch.randn(3, 4, dtype=DTYPE)
    torch.testing.assert_close(col_vec(g @ x @ a), torch.kron(a, g) @ col_vec(x))
    torch.testing.assert_close(kronecker_quadratic(x, a, g), col_vec(x) @ torch.kron(a, g) @ col_vec(x))


def test_step_scale_bounds_predicted_kl():
    gen = torch.Generator().manual_seed(0)
    exponents = torch.randint(-8, 4, (50,), generator=gen).to(DTYPE)
    for quadratic in torch.rand(50, generator=gen, dtype=DTYPE) * torch.pow(10.0, exponents):
        scale = step_scale(quadratic, torch.tensor(1.0, dtype=DTYPE), lr=0.25, kl_clip=1e-3)
        assert 0.5 * scale**2 * quadratic <= 1e-3 * (1 + 1e-12)
        assert scale <= 0.25
        expected = min(0.25, math.sqrt(2e-3 / quadratic.item()))
        assert scale.item() == pytest.approx(expected)
    assert step_scale(torch.tensor(0.0), torch.tensor(0.0), 0.25, 1e-3).item() == 0.25  # no curvature: lr
    assert step_scale(torch.tensor(1e6), torch.tensor(0.0), 0.25, None).item() == 0.25  # no clip: lr


def test_rescale_is_the_minimizer_of_the_quadratic_model():
    """α* = gᵀd / q minimizes −α gᵀd + ½ α² q (checked on a grid); the cap lr still applies."""
    descent, quadratic = torch.tensor(0.3, dtype=DTYPE), torch.tensor(2.0, dtype=DTYPE)
    alpha = step_scale(quadratic, descent, lr=10.0, kl_clip=None, rescale=True)
    grid = torch.linspace(0, 1, 10001, dtype=DTYPE)
    model = -grid * descent + 0.5 * grid**2 * quadratic
    assert alpha.item() == pytest.approx(grid[model.argmin()].item(), abs=1e-4)
    assert step_scale(quadratic, descent, lr=0.1, kl_clip=None, rescale=True).item() == pytest.approx(0.1)
    assert step_scale(quadratic, -descent, lr=1.0, kl_clip=None, rescale=True).item() == 0.0  # ascent: no step


# --- the optimizer's blocks against explicit Fisher matrices ----------------------------------

def test_factors_and_block_equal_kron_of_hand_computed_factors():
    net = make_net()
    x, targets = make_data()
    kfac = KFAC(list(net[::2]), lr=1e-3, kl_clip=None, momentum=0.0)
    a_bars, grads = per_sample_output_grads(net, x, targets)
    kfac_update(kfac, net, x, targets)  # the first update initializes the averages with this batch
    for k, block in enumerate(kfac.linear):
        a_hand, g_hand = outer_mean(a_bars[k]), outer_mean(grads[k])
        torch.testing.assert_close(block.a, a_hand)
        torch.testing.assert_close(block.g, g_hand)
        # The block the optimizer applies (X ↦ G X A) is kron(A, G) on column-stacked weights.
        out_dim, in_dim = block.layer.weight.shape
        basis = torch.eye(out_dim * (in_dim + 1), dtype=DTYPE)
        applied = torch.stack([col_vec(block.g @ e.reshape(in_dim + 1, out_dim).mT @ block.a) for e in basis], 1)
        torch.testing.assert_close(applied, torch.kron(a_hand, g_hand))


def layer_score_and_jacobian(net: nn.Sequential, x: torch.Tensor, index: int):
    """The logits of x as a function of one layer's column-stacked [W | b] (for exact Jacobians)."""
    weight, bias = net[index].weight.detach(), net[index].bias.detach()
    out_dim, in_dim = weight.shape

    def logits_of(w_col: torch.Tensor) -> torch.Tensor:
        wb = w_col.reshape(in_dim + 1, out_dim).mT
        return functional_call(net, {f"{index}.weight": wb[:, :-1], f"{index}.bias": wb[:, -1]}, (x,))

    return logits_of, col_vec(torch.cat([weight, bias[:, None]], 1))


def test_single_datum_single_sample_block_is_the_exact_fisher_estimate():
    """One datum, one sampled target: kron(A, G) = outer product of ∇vec(W) log p(ŷ|x), exactly."""
    net = make_net()
    x, targets = make_data(batch=1)
    scores = []
    for index in (0, 2):
        logits_of, w_col = layer_score_and_jacobian(net, x, index)
        w_col.requires_grad_(True)
        (score,) = torch.autograd.grad(log_likelihood(logits_of(w_col), targets).sum(), w_col)
        scores.append(score)
    kfac = KFAC(list(net[::2]), lr=1e-3, kl_clip=None, momentum=0.0)
    kfac_update(kfac, net, x, targets)
    for block, score in zip(kfac.linear, scores, strict=True):
        torch.testing.assert_close(torch.kron(block.a, block.g), torch.outer(score, score))


def test_single_datum_block_equals_exact_fisher_block():
    """Enumerating every outcome instead of sampling: n·kron(A, G) = J_Wᵀ (diag p − ppᵀ) J_W.

    The batch holds the datum once per class y with weight √p_y on log p(y|x), so G sums
    p_y g_y g_yᵀ = E_y[g gᵀ] exactly (divided by the n copies); A = ā āᵀ since every row is the same x.
    """
    net = make_net()
    x, _ = make_data(batch=1)
    probs = torch.softmax(net(x), -1)[0].detach()
    output_fisher = torch.diag(probs) - torch.outer(probs, probs)
    exact = []
    for index in (0, 2):
        logits_of, w_col = layer_score_and_jacobian(net, x, index)
        jac = torch.autograd.functional.jacobian(lambda w, f=logits_of: f(w)[0], w_col)
        exact.append(jac.mT @ output_fisher @ jac)
    n = probs.numel()
    classes = torch.arange(n)
    kfac = KFAC(list(net[::2]), lr=1e-3, kl_clip=None, momentum=0.0)
    with kfac.record():
        logits = net(x.expand(n, -1))
    fisher_loss = (probs.sqrt() * log_likelihood(logits, classes)).sum()
    kfac.step(-log_likelihood(logits, classes).mean(), fisher_loss)
    for block, fisher in zip(kfac.linear, exact, strict=True):
        torch.testing.assert_close(n * torch.kron(block.a, block.g), fisher)


def dense_damped_block(block, damping: float) -> torch.Tensor:
    shift_a, shift_g = split_damping(block.a, block.g, damping, use_pi=True)
    eye_a = torch.eye(block.a.shape[0], dtype=DTYPE)
    eye_g = torch.eye(block.g.shape[0], dtype=DTYPE)
    return torch.kron(block.a + shift_a * eye_a, block.g + shift_g * eye_g)


def test_preconditioned_gradient_equals_dense_solve_and_damping_is_applied_once():
    net = make_net()
    x, targets = make_data(batch=20)
    kfac = KFAC(list(net[::2]), lr=1e-3, kl_clip=None, momentum=0.0, damping=0.05)
    kfac_update(kfac, net, x, targets)
    grads = [torch.randn(b.layer.weight.shape[0], b.layer.weight.shape[1] + 1, dtype=DTYPE) for b in kfac.linear]
    inverses = [b.inverse for b in kfac.linear]
    first = kfac.natural_gradient(grads, inverses)
    second = kfac.natural_gradient(grads, inverses)
    for block, grad, v1, v2 in zip(kfac.linear, grads, first, second, strict=True):
        assert torch.equal(v1, v2)  # nothing is added to the factors by preconditioning
        expected = torch.linalg.solve(dense_damped_block(block, 0.05), col_vec(grad))
        torch.testing.assert_close(col_vec(v1), expected)
        torch.testing.assert_close(col_vec(precondition(grad, block.inverse.a_inverse, block.inverse.g_inverse)),
                                   expected)


def test_step_is_the_scaled_dense_natural_gradient_with_predicted_kl_at_most_kl_clip():
    net = make_net()
    x, targets = make_data(batch=30)
    kfac = KFAC(list(net[::2]), lr=10.0, kl_clip=1e-4, momentum=0.0, damping=1e-2, curvature="kfac")
    before = [p.detach().clone() for p in net.parameters()]
    with kfac.record():
        logits = net(x)
    loss = -log_likelihood(logits, targets).mean()
    grads = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
    out = kfac.step(loss, log_likelihood(logits, targets).sum())
    assert out["skipped"].item() == 0.0
    quadratic, steps = torch.zeros((), dtype=DTYPE), []
    for k, block in enumerate(kfac.linear):
        grad = col_vec(torch.cat([grads[2 * k], grads[2 * k + 1][:, None]], 1))
        dense = dense_damped_block(block, 1e-2)
        natural = torch.linalg.solve(dense, grad)
        quadratic = quadratic + natural @ dense @ natural
        change = torch.cat([block.layer.weight.detach() - before[2 * k],
                            (block.layer.bias.detach() - before[2 * k + 1])[:, None]], 1)
        steps.append((col_vec(change), natural))
    scale = min(10.0, math.sqrt(2 * 1e-4 / quadratic.item()))
    for change, natural in steps:
        torch.testing.assert_close(change, -scale * natural)
    assert out["step_scale"].item() == pytest.approx(scale)
    assert out["predicted_kl"].item() == pytest.approx(1e-4) and out["predicted_kl"].item() <= 1e-4 * (1 + 1e-9)


def test_predicted_kl_stays_under_kl_clip_with_momentum():
    net = make_net()
    kfac = KFAC(list(net[::2]), lr=10.0, kl_clip=1e-3, momentum=0.9, curvature="kfac")
    for seed in range(12):
        x, targets = make_data(batch=16, seed=seed)
        before = [p.detach().clone() for p in net.parameters()]
        out = kfac_update(kfac, net, x, targets)
        # ½ ΔᵀF̂Δ of the step actually applied, with the damped factors the step was sized with
        predicted = sum(0.5 * kronecker_quadratic(torch.cat([b.layer.weight.detach() - before[2 * k],
                                                             (b.layer.bias.detach() - before[2 * k + 1])[:, None]], 1),
                                                  b.inverse.a_damped, b.inverse.g_damped)
                        for k, b in enumerate(kfac.linear))
        assert predicted.item() == pytest.approx(out["predicted_kl"].item(), rel=1e-9)
        assert predicted.item() <= 1e-3 * (1 + 1e-9)


def test_momentum_is_a_bias_corrected_average_of_natural_gradients():
    net = make_net()
    x, targets = make_data(batch=16)
    kfac = KFAC(list(net[::2]), lr=1e-2, kl_clip=None, momentum=0.5, inv_every=1000)
    before = [p.detach().clone() for p in net.parameters()]
    kfac_update(kfac, net, x, targets)
    first = [p.detach() - b for p, b in zip(net.parameters(), before, strict=True)]
    # Same data again: the new natural gradient v2 averages with v1 as (0.5·0.5 v1 + 0.5 v2) / 0.75.
    loss = -log_likelihood(net(x), targets).mean()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    grads = [torch.cat([grads[2 * k], grads[2 * k + 1][:, None]], 1) for k in range(2)]
    natural = kfac.natural_gradient(grads, [b.inverse for b in kfac.linear])  # no refresh before next step
    before = [p.detach().clone() for p in net.parameters()]
    kfac_update(kfac, net, x, targets)
    for k, block in enumerate(kfac.linear):
        v1 = -torch.cat([first[2 * k], first[2 * k + 1][:, None]], 1) / 1e-2
        change = torch.cat([block.layer.weight.detach() - before[2 * k],
                            (block.layer.bias.detach() - before[2 * k + 1])[:, None]], 1)
        expected = -1e-2 * (0.25 * v1 + 0.5 * natural[k]) / 0.75
        torch.testing.assert_close(change, expected)


# --- the Gaussian log σ block -----------------------------------------------------------------

def test_gaussian_log_std_fisher_is_two_and_decoupled_from_the_mean_network():
    """Exact Fisher = Hessian of KL(π_old‖π) at π_old: 2·I for log σ, 0 cross-block with the mean weights."""
    from polopt.distributions import DiagGaussian, GaussianParams

    torch.manual_seed(0)
    dist = DiagGaussian()
    obs = torch.randn(7, 3, dtype=DTYPE)
    mean_layer = nn.Linear(3, 2).to(DTYPE)
    log_std0 = torch.tensor([0.3, -0.5], dtype=DTYPE)
    old = GaussianParams(mean_layer(obs).detach(), log_std0.expand(7, 2))
    bias0 = mean_layer.bias.detach().clone()

    def mean_kl(flat: torch.Tensor) -> torch.Tensor:
        bias, log_std = flat[:2], flat[2:]
        new = GaussianParams(obs @ mean_layer.weight.detach().mT + bias, log_std.expand(7, 2))
        return dist.kl(old, new).mean()

    hessian = torch.autograd.functional.hessian(mean_kl, torch.cat([bias0, log_std0]))
    torch.testing.assert_close(hessian[2:, 2:], 2.0 * torch.eye(2, dtype=DTYPE))
    torch.testing.assert_close(hessian[:2, 2:], torch.zeros(2, 2, dtype=DTYPE))
    torch.testing.assert_close(hessian[:2, :2], torch.diag(torch.exp(-2 * log_std0)))  # 1/σ² for the mean


def test_diagonal_block_direction_is_the_dense_solve():
    net = make_net()
    log_std = nn.Parameter(torch.zeros(3, dtype=DTYPE))
    kfac = KFAC(list(net[::2]), [DiagonalBlock(log_std, 2.0)], lr=1e-3, kl_clip=None, momentum=0.0,
                damping=0.1)
    grads = [torch.zeros(4, 4, dtype=DTYPE), torch.zeros(3, 5, dtype=DTYPE), torch.tensor([1.0, -2.0, 0.5],
                                                                                         dtype=DTYPE)]
    inverses = [DampedInverse(torch.eye(4, dtype=DTYPE), torch.eye(4, dtype=DTYPE), *[torch.empty(0)] * 3),
                DampedInverse(torch.eye(5, dtype=DTYPE), torch.eye(3, dtype=DTYPE), *[torch.empty(0)] * 3)]
    direction = kfac.natural_gradient(grads, inverses)[2]
    torch.testing.assert_close(direction, torch.linalg.solve(2.1 * torch.eye(3, dtype=DTYPE), grads[2]))


# --- robustness ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("factor", ["a", "g"])
def test_injected_non_finite_factor_skips_the_update_and_recovers(bad: float, factor: str):
    net = make_net()
    x, targets = make_data(batch=16)
    kfac = KFAC(list(net[::2]), lr=0.1, kl_clip=1e-2, momentum=0.9, inv_every=3)
    kfac_update(kfac, net, x, targets)
    getattr(kfac.linear[1], factor)[0, 0] = bad
    before = [p.detach().clone() for p in net.parameters()]
    out = kfac_update(kfac, net, x, targets)
    assert out["skipped"].item() == 1.0 and out["step_scale"].item() == 0.0
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))  # bitwise
    out = kfac_update(kfac, net, x, targets)  # corrupt state was dropped: the run goes on
    assert out["skipped"].item() == 0.0
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert not all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))


def test_non_finite_batch_statistics_are_never_committed():
    net = make_net()
    x, targets = make_data(batch=16)
    kfac = KFAC(list(net[::2]), lr=0.1, kl_clip=1e-2)
    kfac_update(kfac, net, x, targets)
    stored = [(b.a.clone(), b.g.clone()) for b in kfac.linear]
    before = [p.detach().clone() for p in net.parameters()]
    bad_x = x.clone()
    bad_x[3, 1] = float("inf")
    out = kfac_update(kfac, net, bad_x, targets)
    assert out["skipped"].item() == 1.0
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))
    for block, (a, g) in zip(kfac.linear, stored, strict=True):
        assert torch.equal(block.a, a) and torch.equal(block.g, g)


def test_failed_eigendecomposition_skips_the_update(monkeypatch: pytest.MonkeyPatch):
    net = make_net()
    x, targets = make_data(batch=16)
    kfac = KFAC(list(net[::2]), lr=0.1, kl_clip=1e-2)
    before = [p.detach().clone() for p in net.parameters()]

    def failing_eigh(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    out = kfac_update(kfac, net, x, targets)
    assert out["skipped"].item() == 1.0
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))
    monkeypatch.undo()
    assert kfac_update(kfac, net, x, targets)["skipped"].item() == 0.0


def test_raise_mode_stops_with_a_clear_error():
    net = make_net()
    x, targets = make_data(batch=16)
    kfac = KFAC(list(net[::2]), on_nonfinite="raise")
    kfac_update(kfac, net, x, targets)
    kfac.linear[0].g[1, 1] = float("nan")
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(NonFiniteError, match="non-finite G factor of layer 0"):
        kfac_update(kfac, net, x, targets)
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))


def test_exact_curvature_callback_sizes_the_step():
    """With a curvature callback the trust region uses its q: ½ η² q = κ for the step applied."""
    net = make_net()
    x, targets = make_data(batch=16)
    kfac = KFAC(list(net[::2]), lr=10.0, kl_clip=1e-3, momentum=0.0)
    seen = {}

    def curvature(pairs):
        seen["params"] = [p for p, _ in pairs]
        return sum((d**2).sum() for _, d in pairs) * 3.0

    before = [p.detach().clone() for p in net.parameters()]
    with kfac.record():
        logits = net(x)
    out = kfac.step(-log_likelihood(logits, targets).mean(), log_likelihood(logits, targets).sum(), curvature)
    assert [id(p) for p in seen["params"]] == [id(p) for p in net.parameters()]
    change_q = 3.0 * sum(((p.detach() - b) ** 2).sum() for p, b in zip(net.parameters(), before, strict=True))
    assert (0.5 * change_q).item() == pytest.approx(1e-3)
    assert out["predicted_kl"].item() == pytest.approx(1e-3)


def test_sampled_quadratic_is_the_mean_squared_per_sample_score_projection():
    """dᵀF̃d with F̃ = (1/B) Σ s_i s_iᵀ, s_i = ∇θ log p(ŷ_i|x_i) from a per-sample autograd loop."""
    net = make_net()
    log_std = nn.Parameter(torch.zeros(2, dtype=DTYPE))
    x, targets = make_data(batch=9)
    kfac = KFAC(list(net[::2]), [DiagonalBlock(log_std, 2.0)], curvature="sampled")
    with kfac.record():
        logits = net(x)
    recorded = kfac._take_recorded()
    _, fisher_grads = kfac._statistics(log_likelihood(logits, targets).sum(), recorded)
    directions = [torch.randn(4, 4, dtype=DTYPE), torch.randn(3, 5, dtype=DTYPE), torch.randn(2, dtype=DTYPE)]
    flat_d = torch.cat([d.reshape(-1) for _, d in kfac.parameter_directions(directions)][:-1])
    scores = []
    for xi, yi in zip(x, targets, strict=True):
        grads = torch.autograd.grad(log_likelihood(net(xi[None]), yi[None]).sum(), list(net.parameters()))
        scores.append(torch.cat([g.reshape(-1) for g in grads]))
    expected = sum((s @ flat_d) ** 2 for s in scores) / len(scores) + 2.0 * directions[2].pow(2).sum()
    torch.testing.assert_close(kfac.sampled_quadratic(directions, recorded, fisher_grads), expected)


def test_stored_state_holds_no_autograd_history():
    """Factors, inverses and momentum are statistics: a graph kept in them would chain every update."""
    from polopt.kfac_blocks import state_tensors

    net = make_net()
    kfac = KFAC(list(net[::2]), momentum=0.5)
    for seed in range(3):
        kfac_update(kfac, net, *make_data(batch=8, seed=seed))
    tensors = state_tensors(kfac.blocks)
    assert len(tensors) == 2 * (2 + 5 + 1)
    assert not any(t.requires_grad or t.grad_fn is not None for t in tensors)


def test_state_dict_round_trip_reproduces_the_next_step():
    x, targets = make_data(batch=16)
    net_a = make_net()
    kfac_a = KFAC(list(net_a[::2]), lr=0.1, kl_clip=1e-2, inv_every=2)
    for _ in range(3):
        kfac_update(kfac_a, net_a, x, targets)
    net_b = make_net()
    net_b.load_state_dict(net_a.state_dict())
    kfac_b = KFAC(list(net_b[::2]), lr=0.1, kl_clip=1e-2, inv_every=2)
    kfac_b.load_state_dict(kfac_a.state_dict())
    kfac_update(kfac_a, net_a, x, targets)
    kfac_update(kfac_b, net_b, x, targets)
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_step_without_recorded_forward_is_an_error():
    net = make_net()
    kfac = KFAC(list(net[::2]))
    x, targets = make_data()
    logits = net(x)
    with pytest.raises(RuntimeError, match="record"):
        kfac.step(-log_likelihood(logits, targets).mean(), log_likelihood(logits, targets).sum())
