"""K-FAC natural-gradient optimizer with ACKTR's trust region, for any stack of Linear layers.

Martens & Grosse 2015 (K-FAC); Wu et al. 2017 (ACKTR). The arithmetic lives in polopt.kfac_math
and the per-layer state in polopt.kfac_blocks; this module owns the update:

1. record: forward hooks keep each Linear layer's input a and output s during one forward pass;
2. gradients: ∇W = Σ_i (∂L/∂s_i) ā_iᵀ from one backward to the layer outputs;
3. statistics: A ← EMA of E[ā āᵀ], G ← EMA of E[g gᵀ], with g the per-sample gradient of a *sampled*
   Fisher loss (log-likelihood of targets drawn from the model itself);
4. every `inv_every` updates: damped inverses by eigendecomposition (damping split between factors);
5. direction V = G⁻¹ ∇W A⁻¹ per layer, optional momentum, and the step −η·d with
   η = min(lr, √(2κ / dᵀFd)) (and, with ``rescale``, at most the quadratic-model minimizer).

Parameters that are not Linear layers get a :class:`DiagonalBlock` with a known constant Fisher: a
Gaussian policy's state-independent log σ has the exact Fisher 2 per dimension, and its cross-block
with the mean network is exactly 0 (it pairs odd and even moments of the Gaussian noise), so the
exact block is used there instead of an estimate.

Nothing non-finite reaches the weights: new statistics, inverses and the step are computed into
temporaries and checked with one host sync; on failure nothing is committed and the update is
counted as skipped (or NonFiniteError is raised when ``on_nonfinite="raise"``). Stored state that is
itself corrupt is dropped, so the next update starts the statistics afresh and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from polopt.guards import NonFiniteError, all_finite
from polopt.kfac_blocks import (
    Block,
    DampedInverse,
    DiagonalBlock,
    LinearBlock,
    blocks_state_dict,
    clear_state,
    load_blocks_state_dict,
    state_tensors,
)
from polopt.kfac_math import (
    augment,
    damped_inverse,
    ema_second_moment,
    kronecker_quadratic,
    precondition,
    split_damping,
    step_scale,
)

__all__ = ["KFAC", "Curvature", "DampedInverse", "DiagonalBlock", "LinearBlock"]

ON_NONFINITE = ("skip", "raise")
CURVATURES = ("sampled", "kfac")  # q = dᵀFd from the batch's sampled Fisher, or from the damped K-FAC F̂

# Maps (parameter, direction) pairs to the exact quadratic dᵀFd (e.g. via a Jacobian-vector product).
Curvature = Callable[[list[tuple[Tensor, Tensor]]], Tensor]


def _norms(tensors: list[Tensor]) -> Tensor:
    """Norms of all tensors in one fused kernel: finite exactly when every element is finite (a norm
    too large for the dtype also counts as non-finite, which is the conservative side)."""
    return torch.stack(torch._foreach_norm(tensors))


class KFAC:
    """K-FAC optimizer over `layers` (and `diagonal` blocks) with a KL trust region.

    Usage per update: ``with kfac.record(): out = net(x)``, then ``kfac.step(loss, fisher_loss)``
    where ``fisher_loss`` is the **sum** over samples of log p(ŷ_i | x_i) for ŷ_i drawn from the
    model (its per-sample output gradients build G). ``step`` returns diagnostics as 0-d tensors.
    """

    def __init__(self, layers: Sequence[nn.Linear], diagonal: Sequence[DiagonalBlock] = (), lr: float = 0.25,
                 kl_clip: float | None = 1e-3, momentum: float = 0.0, decay: float = 0.99,
                 damping: float = 1e-2, pi_correction: bool = True, inv_every: int = 10,
                 rescale: bool = False, curvature: str = "sampled", on_nonfinite: str = "skip"):
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if not layers:
            raise ValueError("K-FAC needs at least one Linear layer")
        self.linear = [LinearBlock(layer) for layer in layers]
        self.diagonal = list(diagonal)
        self.blocks: list[Block] = [*self.linear, *self.diagonal]
        self.lr, self.kl_clip, self.momentum = lr, kl_clip, momentum
        self.decay, self.damping, self.pi_correction = decay, damping, pi_correction
        self.inv_every, self.rescale, self.on_nonfinite = inv_every, rescale, on_nonfinite
        self.curvature = curvature
        self._worst_condition: Tensor | None = None  # cached at each refresh for the diagnostics
        self.updates = 0  # committed updates: drives the inverse refresh and momentum bias correction

    @contextmanager
    def record(self) -> Iterator[None]:
        """Records each layer's input and output during the forward pass inside the block (the last
        call of a layer wins)."""

        def recorder(block: LinearBlock) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
            def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
                # The input is detached: A is a statistic, and a graph kept inside the moving
                # average would chain every past forward pass together.
                block.recorded = (inputs[0].detach(), output)
            return hook

        handles = [b.layer.register_forward_hook(recorder(b)) for b in self.linear]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _take_recorded(self) -> list[tuple[Tensor, Tensor]]:
        """(ā [B, in + 1], s) per layer, and forgets them (each forward serves one step)."""
        recorded = []
        for i, block in enumerate(self.linear):
            if block.recorded is None:
                raise RuntimeError(f"K-FAC layer {i} recorded no forward pass: run it inside kfac.record()")
            a, s = block.recorded
            recorded.append((augment(a.reshape(-1, a.shape[-1]), block.has_bias), s))
            block.recorded = None
        return recorded

    def _gradients(self, loss: Tensor, recorded: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """∇W = Σ_i (∂L/∂s_i) ā_iᵀ per layer ([out, in + 1]), then ∂L/∂θ of the diagonal blocks."""
        outputs = [s for _, s in recorded]
        grads = torch.autograd.grad(loss, [*outputs, *(b.param for b in self.diagonal)], retain_graph=True)
        linear = [gs.reshape(-1, gs.shape[-1]).mT @ a_bar for (a_bar, _), gs in zip(recorded, grads, strict=False)]
        return linear + list(grads[len(outputs):])

    def _statistics(self, fisher_loss: Tensor, recorded: list[tuple[Tensor, Tensor]]
                    ) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor]]:
        """New moving averages (A, G) per layer (the stored ones are left untouched), and the
        per-sample output gradients g [B, out] of the sampled Fisher loss."""
        fisher_grads = [g.reshape(-1, g.shape[-1]) for g in torch.autograd.grad(fisher_loss, [s for _, s in recorded])]
        factors = [(ema_second_moment(block.a, a_bar, self.decay), ema_second_moment(block.g, g, self.decay))
                   for block, (a_bar, _), g in zip(self.linear, recorded, fisher_grads, strict=True)]
        return factors, fisher_grads

    def sampled_quadratic(self, directions: Sequence[Tensor], recorded: list[tuple[Tensor, Tensor]],
                          fisher_grads: list[Tensor]) -> Tensor:
        """dᵀF̃d for the batch's sampled Fisher F̃ = E_i[s_i s_iᵀ], s_i the per-sample score.

        The score of sample i w.r.t. layer l is g_i ā_iᵀ, so s_iᵀd = Σ_l g_iᵀ D_l ā_i: the cross-layer
        terms that the block-diagonal F̂ drops are included, at the cost of one small matmul per layer.
        Diagonal blocks add their exact fisher · |d|² (their cross terms vanish in expectation).
        """
        n = len(self.linear)
        projections = [((a_bar @ d.mT) * g).sum(-1) for (a_bar, _), g, d in zip(recorded, fisher_grads,
                                                                                 directions[:n], strict=True)]
        linear = torch.stack(projections).sum(0).pow(2).mean()
        diagonal = [b.fisher * d.pow(2).sum() for b, d in zip(self.diagonal, directions[n:], strict=True)]
        return linear + sum(diagonal) if diagonal else linear

    def _inverses(self, factors: list[tuple[Tensor, Tensor]]) -> list[DampedInverse]:
        """Damped inverses of the new factors when a refresh is due, else the stored ones."""
        stored = [b.inverse for b in self.linear]
        if self.updates % self.inv_every != 0 and all(inv is not None for inv in stored):
            return stored  # type: ignore[return-value]
        refreshed = []
        for a, g in factors:
            shift_a, shift_g = split_damping(a, g, self.damping, self.pi_correction)
            a_inverse, a_damped, cond_a = damped_inverse(a, shift_a)
            g_inverse, g_damped, cond_g = damped_inverse(g, shift_g)
            refreshed.append(DampedInverse(a_inverse, g_inverse, a_damped, g_damped, torch.stack([cond_a, cond_g])))
        return refreshed

    def natural_gradient(self, grads: Sequence[Tensor], inverses: Sequence[DampedInverse]) -> list[Tensor]:
        """F̂⁻¹ ∇: G⁻¹ ∇W A⁻¹ per layer, ∇θ / (fisher + λ) per diagonal block."""
        n = len(self.linear)
        linear = [precondition(grad, inv.a_inverse, inv.g_inverse) for grad, inv in zip(grads[:n], inverses,
                                                                                          strict=True)]
        return linear + [grad / (b.fisher + self.damping) for b, grad in zip(self.diagonal, grads[n:], strict=True)]

    def quadratic(self, directions: Sequence[Tensor], inverses: Sequence[DampedInverse]) -> Tensor:
        """dᵀ F̂ d for the damped K-FAC matrix F̂ (block-diagonal over layers and diagonal blocks)."""
        n = len(self.linear)
        terms = [kronecker_quadratic(d, inv.a_damped, inv.g_damped) for d, inv in zip(directions[:n], inverses,
                                                                                      strict=True)]
        terms += [(b.fisher + self.damping) * d.pow(2).sum() for b, d in zip(self.diagonal, directions[n:],
                                                                             strict=True)]
        return torch.stack(terms).sum()

    def _with_momentum(self, natural: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(new momentum buffers, bias-corrected direction): m ← μm + (1−μ)V, d = m / (1 − μ^(t+1))."""
        if self.momentum == 0.0:
            return natural, natural
        buffers = [v * (1.0 - self.momentum) if b.momentum is None else torch.lerp(v, b.momentum, self.momentum)
                   for b, v in zip(self.blocks, natural, strict=True)]
        correction = 1.0 - self.momentum ** (self.updates + 1)
        return buffers, [m / correction for m in buffers]

    def _descent(self, grads: list[Tensor], directions: list[Tensor]) -> Tensor:
        """gᵀd, computed only where the step rule or the F̂ shortcut uses it (it costs a few ops)."""
        if self.rescale or (self.curvature == "kfac" and self.momentum == 0.0):
            return torch.stack([(g * d).sum() for g, d in zip(grads, directions, strict=True)]).sum()
        return grads[0].new_zeros(())

    def parameter_directions(self, directions: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Splits per-block directions into (parameter, direction) pairs in block order."""
        return [pair for b, d in zip(self.blocks, directions, strict=True) for pair in b.parameter_directions(d)]

    def step(self, loss: Tensor, fisher_loss: Tensor, curvature: Curvature | None = None) -> dict[str, Tensor]:
        """One K-FAC update of the recorded layers; returns diagnostics (0-d tensors, no host sync).

        The step −η·d is sized with q = dᵀFd: from the `curvature` callback when given (e.g. the exact
        Fisher by a Jacobian-vector product), else per ``self.curvature``: the batch's sampled Fisher
        (an unbiased estimate of the exact one, cross-layer terms included, so the trust region bounds
        the KL the step really causes) or the damped K-FAC matrix F̂ as in the reference ACKTR (which
        ignores cross-layer terms and lags behind the policy, so the real KL is often several times κ).
        """
        recorded = self._take_recorded()
        grads = self._gradients(loss, recorded)
        factors, fisher_grads = self._statistics(fisher_loss, recorded)
        flat_factors = [t for pair in factors for t in pair]
        try:
            inverses = self._inverses(factors)
        except torch.linalg.LinAlgError as err:
            # Non-finite factors make eigh fail; finite ones that still fail are pathological: start afresh.
            return self._skip(f"eigendecomposition failed ({err})", loss, reset=all_finite([_norms(flat_factors)]))
        buffers, directions = self._with_momentum(self.natural_gradient(grads, inverses))
        descent = self._descent(grads, directions)
        if curvature is not None:
            quadratic = curvature(self.parameter_directions(directions))
        elif self.curvature == "sampled":
            quadratic = self.sampled_quadratic(directions, recorded, fisher_grads)
        elif self.momentum == 0.0:
            quadratic = descent  # d = F̂⁻¹g, so dᵀF̂d = dᵀg with the same damped factors
        else:
            quadratic = self.quadratic(directions, inverses)
        scale = step_scale(quadratic, descent, self.lr, self.kl_clip, self.rescale)
        steps = list(torch._foreach_mul(directions, -scale))
        if not all_finite([_norms([loss, quadratic, *steps, *flat_factors])]):
            return self._skip(self._first_nonfinite(grads, factors, steps), loss)
        self._commit(factors, inverses, buffers, steps)
        return {"step_scale": scale, "predicted_kl": 0.5 * scale.pow(2) * quadratic,
                "skipped": loss.new_zeros(()), **self.condition_numbers()}

    def _commit(self, factors: list[tuple[Tensor, Tensor]], inverses: list[DampedInverse], buffers: list[Tensor],
                steps: list[Tensor]) -> None:
        if inverses[0] is not self.linear[0].inverse or self._worst_condition is None:
            self._worst_condition = torch.stack([inv.condition for inv in inverses]).amax(0)
        for layer, (a, g), inverse in zip(self.linear, factors, inverses, strict=True):
            layer.a, layer.g, layer.inverse = a, g, inverse
        if self.momentum > 0.0:
            for block, buffer in zip(self.blocks, buffers, strict=True):
                block.momentum = buffer
        params, parts = zip(*self.parameter_directions(steps), strict=True)
        with torch.no_grad():
            torch._foreach_add_(list(params), list(parts))  # one kernel for all parameters
        self.updates += 1

    def condition_numbers(self) -> dict[str, Tensor]:
        """Largest condition number over layers of the damped factors A + c_A I and G + c_G I (as of
        the last refresh; NaN before the first)."""
        if self._worst_condition is None:
            nan = torch.full((), float("nan"), device=self.linear[0].device)
            return {"cond_a": nan, "cond_g": nan}
        return {"cond_a": self._worst_condition[0], "cond_g": self._worst_condition[1]}

    def _first_nonfinite(self, grads: list[Tensor], factors: list[tuple[Tensor, Tensor]],
                         steps: list[Tensor]) -> str:
        """Names the first non-finite quantity (failure path only, so the extra syncs are fine)."""
        named = [(f"gradient of block {i}", t) for i, t in enumerate(grads)]
        named += [(f"{kind} factor of layer {i}", t) for i, pair in enumerate(factors)
                  for kind, t in zip("AG", pair, strict=True)]
        named += [(f"step of block {i}", t) for i, t in enumerate(steps)]
        return next((f"non-finite {name}" for name, t in named if not all_finite([t])), "non-finite loss or step")

    def _skip(self, reason: str, loss: Tensor, reset: bool = False) -> dict[str, Tensor]:
        """Leaves the weights untouched; drops stored state that is itself corrupt so the run recovers."""
        if self.on_nonfinite == "raise":
            raise NonFiniteError(f"K-FAC update rejected: {reason}")
        if reset or not all_finite(state_tensors(self.blocks)):
            self.reset()
        zero = loss.detach().new_zeros(())
        return {"step_scale": zero, "predicted_kl": zero, "skipped": zero + 1.0, **self.condition_numbers()}

    def reset(self) -> None:
        """Forgets statistics, inverses and momentum (the next update starts them afresh)."""
        clear_state(self.blocks)
        self.updates = 0
        self._worst_condition = None

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "blocks": blocks_state_dict(self.blocks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_blocks_state_dict(self.blocks, state["blocks"])
        self.updates = int(state["updates"])
        inverses = [b.inverse for b in self.linear if b.inverse is not None]
        self._worst_condition = torch.stack([inv.condition for inv in inverses]).amax(0) if inverses else None
