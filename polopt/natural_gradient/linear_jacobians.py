"""Per-layer Jacobian pieces of a policy at θ_old, computed once and reused by many Jv and Jᵀu.

For a linear layer z = h Wᵀ + b called once per forward pass, the outputs y (the flattened
distribution parameters, K per state) depend on W and b only through z, so per state b

    (J v)_b = D_b (dW h_b + db),     (Jᵀu)_W = Σ_b (D_bᵀ u_b) h_bᵀ,     (Jᵀu)_bias = Σ_b D_bᵀ u_b,

with D_b = ∂y_b/∂z_b ∈ ℝ^{K×out}. D costs one backward pass per output coordinate, once per batch;
afterwards a product needs, per layer, the two matrix products with h that any exact method needs
plus elementwise contractions with D — instead of passes through the network's autograd graph
(whose W·dh products cost out×in per state where D costs K×out).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


class BufferPool:
    """Named buffers reused from one batch to the next.

    A fresh multi-megabyte buffer per update costs more in page faults than the products it serves
    take (measured on a 2-core machine: ~1000 faults, >1 ms per bind). Binding again hands the same
    memory to the new operator, so ``generation`` marks the operators of earlier bindings stale.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}
        self.generation = 0

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self.buffers[name] = like.new_empty(shape)
        return buffer


@dataclass
class CachedLinear:
    """One layer: its parameters' places in the flat layout, its input h [B, in] and its rows of D."""

    weight_index: int
    bias_index: int | None
    inputs: Tensor
    rows: slice

    @property
    def param_indices(self) -> list[int]:
        return [self.weight_index] + ([] if self.bias_index is None else [self.bias_index])


def _weight_gradient(back: Tensor, inputs: Tensor) -> Tensor:
    """Σ_b back_b h_bᵀ for back [out, B], h [B, in]; the same product either way round, but CPU
    GEMMs are several times faster with the narrower factor on the left."""
    return back @ inputs if back.shape[0] < inputs.shape[1] else (inputs.T @ back.T).T


@dataclass
class LinearJacobians:
    """The flattened outputs y [B, K] (with their graph) and the cached layers.

    ``jacobian`` stacks every cached layer's D as [K', Σ out, B] (a layer's rows given by its
    ``rows``) over the K' output coordinates listed in ``active``, those that depend on some cached
    layer; the others (e.g. a state-independent log-std) get 0 from these layers. With this layout
    one elementwise pass contracts all layers with D.
    """

    outputs: Tensor
    layers: list[CachedLinear]
    pool: BufferPool
    jacobian: Tensor | None = None
    active: Tensor | None = None
    generation: int = 0

    @property
    def num_samples(self) -> int:
        return self.outputs.shape[0]

    def _buffer(self, name: str, skip_dims: int) -> Tensor:
        """A workspace shaped like ``jacobian`` without its first `skip_dims` dimensions."""
        if self.pool.generation != self.generation:
            raise RuntimeError("this Fisher operator is stale: its backend was bound to another batch")
        assert self.jacobian is not None
        return self.pool.get(name, tuple(self.jacobian.shape[skip_dims:]), self.jacobian)

    def jvp(self, tangents: list[Tensor]) -> Tensor | None:
        """J v restricted to the cached layers' parameters: [B, K]; None when no layer is cached."""
        if self.jacobian is None or self.active is None:
            return None
        change = self._buffer("change", 1)  # (dW h + db)ᵀ of every layer: [Σ out, B]
        for layer in self.layers:
            weight, rows = tangents[layer.weight_index], change[layer.rows]
            if layer.bias_index is None:
                torch.mm(weight, layer.inputs.T, out=rows)
            else:
                torch.addmm(tangents[layer.bias_index].unsqueeze(1), weight, layer.inputs.T, out=rows)
        active_jv = torch.mul(self.jacobian, change, out=self._buffer("product", 0)).sum(1)  # [K', B]
        return self.outputs.new_zeros(self.outputs.shape).index_copy(1, self.active, active_jv.T)

    def vjp(self, cotangent: Tensor, num_params: int) -> list[Tensor | None]:
        """Jᵀu for the cached layers' parameters (None for the others); u: [B, K]."""
        grads: list[Tensor | None] = [None] * num_params
        if self.jacobian is None or self.active is None:
            return grads
        u = cotangent.index_select(1, self.active).T.contiguous()  # [K', B]
        back = torch.mul(self.jacobian[0], u[0], out=self._buffer("back", 1))
        for k in range(1, u.shape[0]):
            back.addcmul_(self.jacobian[k], u[k])  # (Dᵀu)ᵀ of every layer: [Σ out, B]
        for layer in self.layers:
            grads[layer.weight_index] = _weight_gradient(back[layer.rows], layer.inputs)
            if layer.bias_index is not None:
                grads[layer.bias_index] = back[layer.rows].sum(1)
        return grads


def _cacheable(module: nn.Linear, calls: list[tuple[Tensor, Tensor]], index: dict[int, int],
               batch_size: int) -> bool:
    """A layer qualifies if it ran once on a flat [B, in] input and all its parameters are trained."""
    if len(calls) != 1 or calls[0][0].dim() != 2 or calls[0][0].shape[0] != batch_size:
        return False
    return id(module.weight) in index and (module.bias is None or id(module.bias) in index)


def _depends_on(tensor: Tensor, nodes: set[Any]) -> bool:
    """Whether the autograd graph of `tensor` reaches any of `nodes` (a walk, no computation)."""
    stack, seen = [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if node in nodes:
            return True
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def _active_coordinates(fields: list[Tensor], layer_outputs: list[Tensor]) -> list[int]:
    """Flattened output coordinates of the fields that depend on some cached layer."""
    nodes = {z.grad_fn for z in layer_outputs}
    active: list[int] = []
    offset = 0
    for output_field in fields:
        size = output_field[0].numel()
        if _depends_on(output_field, nodes):
            active.extend(range(offset, offset + size))
        offset += size
    return active


def _record_forward(policy: nn.Module, obs: Tensor, modules: list[nn.Linear]
                    ) -> tuple[list[Tensor], dict[nn.Module, list[tuple[Tensor, Tensor]]]]:
    """The policy's output fields on `obs`, and every call of `modules` as (input, output)."""
    calls: defaultdict[nn.Module, list[tuple[Tensor, Tensor]]] = defaultdict(list)
    handles = [m.register_forward_hook(lambda m, i, o: calls[m].append((i[0], o))) for m in modules]
    try:
        with torch.enable_grad():
            fields = list(policy(obs))
    finally:
        for handle in handles:
            handle.remove()
    return fields, calls


def record_linear_jacobians(policy: nn.Module, obs: Tensor, params: list[nn.Parameter], pool: BufferPool,
                            enabled: bool = True) -> LinearJacobians:
    """Runs the policy once on `obs` and caches the pieces of every qualifying nn.Linear layer
    (in `pool`'s buffers, which earlier bindings' operators then no longer own)."""
    pool.generation += 1
    modules = [m for m in policy.modules() if isinstance(m, nn.Linear)] if enabled else []
    fields, calls = _record_forward(policy, obs, modules)
    batch_size = obs.shape[0]
    outputs = torch.cat([t.reshape(batch_size, -1) for t in fields], 1)
    index = {id(p): i for i, p in enumerate(params)}
    cached = [m for m in modules if _cacheable(m, calls[m], index, batch_size)]
    layer_outputs = [calls[m][0][1] for m in cached]
    active = _active_coordinates(fields, layer_outputs)
    if not active:
        return LinearJacobians(outputs, [], pool, generation=pool.generation)
    bounds = [0]
    for m in cached:
        bounds.append(bounds[-1] + m.out_features)
    layers = [CachedLinear(index[id(m.weight)], None if m.bias is None else index[id(m.bias)],
                           calls[m][0][0].detach(), slice(bounds[i], bounds[i + 1])) for i, m in enumerate(cached)]
    jacobian = pool.get("jacobian", (len(active), bounds[-1], batch_size), outputs)
    # One backward pass per active output coordinate k gives row k of every D for all states at once.
    for row, k in enumerate(active):
        seed = torch.zeros_like(outputs)
        seed[:, k] = 1.0
        parts = torch.autograd.grad(outputs, layer_outputs, seed, retain_graph=True, materialize_grads=True)
        for layer, part in zip(layers, parts, strict=True):
            jacobian[row, layer.rows].copy_(part.T)
    return LinearJacobians(outputs, layers, pool, jacobian.detach(), torch.tensor(active, device=outputs.device),
                           pool.generation)
