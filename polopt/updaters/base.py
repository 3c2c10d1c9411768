"""The updater seam: ``update(batch) -> dict[str, float]``, plus state for checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch import nn

from polopt.batch import Batch
from polopt.value import ValueFitter

# Hydra builds the value fitter as a partial (``_partial_: true``); the updater binds its network.
ValueFitterFactory = Callable[[nn.Module], ValueFitter]


@runtime_checkable
class Updater(Protocol):
    """Owns the parameter update of the policy (and usually the value function).

    ``update`` returns metrics named ``update/...``; the training loop adds the metrics that are
    defined the same way for every updater (KL, entropy, timings).
    """

    def update(self, batch: Batch) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
