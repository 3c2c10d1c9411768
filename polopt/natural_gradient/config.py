"""Structured configs of the natural-gradient pieces and the config groups that offer them.

The updater schema types each piece as :class:`PieceConfig`; the option picked from a group
(``updater/fvp``, ``updater/solver``, ``updater/step_rule``) merges in its own dataclass, so every
nested field is type-checked and an unknown key fails at compose time, whichever option is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from polopt.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, ValueFitterConfig

FRACTION = Range(0.0, 1.0, open_low=True)
_PACKAGE = "polopt.natural_gradient"


@dataclass
class PieceConfig:
    """An injected piece: which class builds it (the option's dataclass adds its fields)."""

    _target_: str = MISSING


@dataclass
class FisherConfig(PieceConfig):
    _target_: str = f"{_PACKAGE}.fisher.DirectFisher"
    damping: float = 0.1
    subsample: float = 1.0
    ranges: ClassVar[dict[str, Range]] = {"damping": NON_NEGATIVE, "subsample": FRACTION}


@dataclass
class AnalyticFisherConfig(FisherConfig):
    _target_: str = f"{_PACKAGE}.fisher.AnalyticFisher"
    cache_layer_jacobians: bool = True


@dataclass
class ConjugateGradientConfig(PieceConfig):
    _target_: str = f"{_PACKAGE}.solvers.ConjugateGradientSolver"
    max_iters: int = 10
    residual_tol: float = 1e-10
    ranges: ClassVar[dict[str, Range]] = {"max_iters": AT_LEAST_ONE, "residual_tol": NON_NEGATIVE}


@dataclass
class DenseSolverConfig(PieceConfig):
    _target_: str = f"{_PACKAGE}.solvers.DenseSolver"


@dataclass
class FixedStepConfig(PieceConfig):
    _target_: str = f"{_PACKAGE}.step_rules.FixedStep"
    step_size: float = 0.1
    ranges: ClassVar[dict[str, Range]] = {"step_size": POSITIVE}


@dataclass
class KLNormalizedStepConfig(PieceConfig):
    _target_: str = f"{_PACKAGE}.step_rules.KLNormalizedStep"
    max_kl: float = 0.01
    ranges: ClassVar[dict[str, Range]] = {"max_kl": POSITIVE}


@dataclass
class LineSearchConfig(PieceConfig):
    _target_: str = f"{_PACKAGE}.step_rules.BacktrackingLineSearch"
    max_kl: float = 0.01
    ratio: float = 0.8
    max_iters: int = 10
    stop_early: bool | None = None  # None: read each verdict on the CPU only (see BacktrackingLineSearch)
    # The full step it backtracks from; its δ follows the line search's by interpolation.
    proposal: PieceConfig = field(
        default_factory=lambda: KLNormalizedStepConfig(max_kl="${..max_kl}"))  # type: ignore[arg-type]
    ranges: ClassVar[dict[str, Range]] = {"max_kl": POSITIVE, "ratio": Range(0.0, 1.0, open_low=True),
                                          "max_iters": AT_LEAST_ONE}


@dataclass
class NaturalGradientConfig:
    """NPG, TNPG and TRPO share this schema; their YAML options pick the pieces."""

    _target_: str = "polopt.updaters.natural_gradient.NaturalGradient"
    fvp: PieceConfig = MISSING
    solver: PieceConfig = MISSING
    step_rule: PieceConfig = MISSING
    value_fitter: ValueFitterConfig = field(default_factory=ValueFitterConfig)


PIECE_OPTIONS: dict[str, dict[str, PieceConfig]] = {
    "updater/fvp": {"analytic": AnalyticFisherConfig(), "direct": FisherConfig()},
    "updater/solver": {"cg": ConjugateGradientConfig(), "dense": DenseSolverConfig()},
    "updater/step_rule": {"fixed": FixedStepConfig(), "kl_normalized": KLNormalizedStepConfig(),
                          "line_search": LineSearchConfig()},
}


def register_piece_options() -> None:
    """Offers each piece as a config group option, e.g. ``updater/fvp=direct``."""
    store = ConfigStore.instance()
    for group, options in PIECE_OPTIONS.items():
        for name, node in options.items():
            store.store(group=group, name=name, node=node)
