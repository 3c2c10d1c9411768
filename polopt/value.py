"""The shared value-function fitter: Adam on ½(V(s) − R)² over minibatches for K epochs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polopt.batch import shuffled_minibatches
from polopt.guards import nonfinite_flag
from polopt.optim import GuardedAdam, clip_grad_norm


class ValueFitter:
    """Regresses V(s) on the batch's returns (GAE λ-returns) with Adam.

    ``clip_range`` optionally clips V around the values the batch was collected with (as PPO's
    reference code does): loss = max((V − R)², (V_old + clip(V − V_old, ±c) − R)²).
    """

    def __init__(self, value: nn.Module, lr: float = 1e-3, epochs: int = 5, minibatches: int = 32,
                 max_grad_norm: float | None = None, clip_range: float | None = None):
        self.value = value
        self.params = [p for p in value.parameters() if p.requires_grad]
        self.optimizer = GuardedAdam(self.params, lr)
        self.epochs = epochs
        self.minibatches = minibatches
        self.max_grad_norm = max_grad_norm
        self.clip_range = clip_range

    def loss(self, obs: Tensor, returns: Tensor, old_values: Tensor) -> Tensor:
        values = self.value(obs)
        loss = (values - returns).pow(2)
        if self.clip_range is not None:
            clipped = old_values + (values - old_values).clamp(-self.clip_range, self.clip_range)
            loss = torch.maximum(loss, (clipped - returns).pow(2))
        return 0.5 * loss.mean()

    def fit(self, obs: Tensor, returns: Tensor, old_values: Tensor) -> dict[str, float]:
        """`epochs` passes over the batch in `minibatches` random disjoint minibatches. A step whose
        gradient is non-finite is skipped on the device (weights and Adam moments untouched)."""
        for _ in range(self.epochs):
            for minibatch in shuffled_minibatches([obs, returns, old_values], self.minibatches):
                loss = self.loss(*minibatch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grads = self.optimizer.grads()
                if self.max_grad_norm is not None:
                    clip_grad_norm(grads, self.max_grad_norm)
                self.optimizer.guarded_step(nonfinite_flag(grads))
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            values = self.value(obs)
            final_loss = 0.5 * (values - returns).pow(2).mean()
        final_loss, skipped = torch.stack([final_loss, self.optimizer.take_skipped()]).tolist()
        return {"update/value_loss": final_loss, "update/value_skipped_steps": skipped}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
