"""Optimizer pieces shared by the first-order updaters: fused Adam that skips flagged steps on the
device and a foreach gradient-norm clip, so a minibatch step needs no host sync (the flag itself is
polopt.guards.nonfinite_flag)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class GuardedAdam(torch.optim.Adam):
    """Adam (Kingma & Ba 2015) with torch's fused kernel, whose :meth:`guarded_step` leaves every
    parameter and moment bitwise unchanged when its flag is set.

    ``guarded_step(skip)`` takes a 0-dim float tensor (1 = skip) computed on the device, so nothing
    waits for the host; :meth:`take_skipped` hands over the count of skipped steps (read it once per update). The
    state layout is torch's own (``state_dict``/``load_state_dict`` and ``param_groups[0]["lr"]``
    work as usual). It calls the fused kernel directly: ``Adam.step``'s per-call bookkeeping costs
    several times the kernel itself for the few small tensors of an MLP.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float):
        super().__init__(list(params), lr=lr, fused=True)
        if len(self.param_groups) != 1:
            raise ValueError("GuardedAdam takes one parameter group")
        self.params: list[Tensor] = list(self.param_groups[0]["params"])
        device = self.params[0].device if self.params else torch.device("cpu")
        self.skipped = torch.zeros((), device=device)
        self._moments: tuple[list[Tensor], list[Tensor], Tensor] | None = None

    def _state_lists(self) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """(exp_avgs, exp_avg_sqs, step), creating the state as ``Adam.step`` would on first use.

        All parameters always step together here, so their step counters are one shared tensor
        (one add per step instead of one per parameter)."""
        if self._moments is None:
            step = next((self.state[p]["step"] for p in self.params if self.state[p]), None)
            if step is None:
                step = torch.zeros((), dtype=torch.float32, device=self.skipped.device)
            for p in self.params:
                if not self.state[p]:
                    self.state[p] = {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                self.state[p]["step"] = step
            states = [self.state[p] for p in self.params]
            self._moments = ([s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], step)
        return self._moments

    def grads(self) -> list[Tensor]:
        """The parameters' gradients (after ``backward``), in parameter order."""
        grads = [p.grad for p in self.params]
        missing = [i for i, g in enumerate(grads) if g is None]
        if missing:
            raise RuntimeError(f"GuardedAdam: parameters {missing} have no gradient (run backward first)")
        return [g for g in grads if g is not None]

    def guarded_step(self, skip: Tensor) -> None:
        grads = self.grads()
        group = self.param_groups[0]
        exp_avgs, exp_avg_sqs, step = self._state_lists()
        beta1, beta2 = group["betas"]
        step += 1
        torch._fused_adam_(self.params, grads, exp_avgs, exp_avg_sqs, [], [step] * len(grads), amsgrad=False,
                           lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                           eps=group["eps"], maximize=False, grad_scale=None, found_inf=skip)
        step -= skip  # a skipped step does not count
        self.skipped += skip

    def take_skipped(self) -> Tensor:
        """Steps skipped since the last call (a 0-dim device tensor); the count starts again at 0."""
        skipped, self.skipped = self.skipped, torch.zeros_like(self.skipped)
        return skipped

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drops the gradients (``Optimizer.zero_grad``'s per-call bookkeeping is most of its cost here)."""
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for p in self.params:
            p.grad = None

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._moments = None  # the state tensors were replaced


def clip_grad_norm(grads: list[Tensor], max_norm: float | None) -> Tensor:
    """Global L2 norm ‖g‖ of `grads`; with `max_norm`, scales them in place by min(1, max_norm / (‖g‖ + 1e-6))
    (``torch.nn.utils.clip_grad_norm_``'s rule, with one foreach kernel per stage on every device)."""
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm is not None:
        torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
    return norm
