"""Jv and Jᵀu from the autograd graph of the outputs, for the parameters no layer cache covers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polopt.natural_gradient.flat_params import flatten, unflatten

# Up to this many such parameters, their per-state Jacobian is built once per batch.
EXPLICIT_JACOBIAN_LIMIT = 64


class AutogradJacobian:
    """Products with J = ∂y/∂θ_rest for outputs y [B, K] and the parameters θ_rest (``indices``).

    Jᵀu = ∂(y·u)/∂θ_rest is one backward pass. Jv uses the double-backward trick: Jᵀu is linear in
    a dummy u, so Jv = ∂(Jᵀu · v)/∂u, on a graph of Jᵀu built once per batch. With few parameters
    (e.g. a state-independent log-std) their Jacobian [B·K, m] is built from m such products once
    per batch instead, and each product is then one small matrix product.
    """

    def __init__(self, outputs: Tensor, params: list[nn.Parameter], indices: list[int]):
        self.outputs = outputs
        self.indices = indices
        self.params = [params[i] for i in indices]
        self.dummy = torch.zeros_like(outputs, requires_grad=True)
        self.jtu = torch.autograd.grad(outputs, self.params, self.dummy, create_graph=True,
                                       materialize_grads=True) if indices else ()
        size = sum(p.numel() for p in self.params)
        self.jacobian: Tensor | None = None
        if 0 < size <= EXPLICIT_JACOBIAN_LIMIT:
            basis = torch.eye(size, dtype=outputs.dtype, device=outputs.device)
            self.jacobian = torch.stack([self._double_backward(unflatten(e, self.params)).reshape(-1)
                                         for e in basis], 1)

    def _double_backward(self, tangents: list[Tensor]) -> Tensor:
        (jv,) = torch.autograd.grad(self.jtu, self.dummy, tangents, retain_graph=True, materialize_grads=True)
        return jv

    def jvp(self, tangents: list[Tensor]) -> Tensor | None:
        """J v for these parameters' tangents (from the full list): [B, K]; None without parameters."""
        if not self.indices:
            return None
        mine = [tangents[i] for i in self.indices]
        if self.jacobian is None:
            return self._double_backward(mine)
        return (self.jacobian @ flatten(mine)).view_as(self.outputs)

    def vjp(self, cotangent: Tensor, grads: list[Tensor | None]) -> None:
        """Writes Jᵀu for these parameters into their places in `grads`."""
        if not self.indices:
            return
        if self.jacobian is None:
            mine = list(torch.autograd.grad(self.outputs, self.params, cotangent, retain_graph=True,
                                            materialize_grads=True))
        else:
            mine = unflatten(self.jacobian.T @ cotangent.reshape(-1), self.params)
        for i, grad in zip(self.indices, mine, strict=True):
            grads[i] = grad
