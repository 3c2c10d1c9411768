"""Structured-config schemas.

Every YAML option under conf/ names its schema first in its defaults list, so OmegaConf type-checks
it: an unknown key or a wrong type fails at compose time with a message naming the key. Ranges that
a type cannot express are declared per schema in ``ranges`` and checked by :func:`validate` before
anything is built.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field: low ≤ x ≤ high (low < x when ``open_low``)."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        return above and value <= self.high

    def __str__(self) -> str:
        low = f"{'>' if self.open_low else '>='} {self.low:g}"
        return low if self.high == math.inf else f"{low} and <= {self.high:g}"


POSITIVE = Range(0.0, open_low=True)
NON_NEGATIVE = Range(0.0)
UNIT = Range(0.0, 1.0)
AT_LEAST_ONE = Range(1)


class ConfigError(ValueError):
    """A configuration value is out of its allowed range."""


@dataclass
class EnvConfig:
    _target_: str = "polopt.envs.make_vector_env"
    id: str = MISSING
    num_envs: int = "${num_envs}"  # type: ignore[assignment]
    backend: str = "gymnasium"
    vectorization: str = "sync"
    max_episode_steps: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    ranges: ClassVar[dict[str, Range]] = {"num_envs": AT_LEAST_ONE}


@dataclass
class PolicyConfig:
    _target_: str = "polopt.networks.make_policy"
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    last_layer_scale: float = 0.01
    log_std_init: float = 0.0
    normalize_obs: bool = True
    obs_clip: float = 10.0
    ranges: ClassVar[dict[str, Range]] = {"obs_clip": POSITIVE, "last_layer_scale": NON_NEGATIVE}


@dataclass
class ValueConfig:
    _target_: str = "polopt.networks.make_value"
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"


@dataclass
class ValueFitterConfig:
    _target_: str = "polopt.value.ValueFitter"
    _partial_: bool = True
    lr: float = 1e-3
    epochs: int = 5
    minibatches: int = 32
    max_grad_norm: float | None = None
    clip_range: float | None = None
    ranges: ClassVar[dict[str, Range]] = {"lr": NON_NEGATIVE, "epochs": NON_NEGATIVE,
                                          "minibatches": AT_LEAST_ONE, "max_grad_norm": POSITIVE,
                                          "clip_range": POSITIVE}


@dataclass
class WandbLoggerConfig:
    _target_: str = "polopt.logging.WandbLogger"
    project: str = "polopt"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    job_type: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class NoLoggerConfig:
    _target_: str = "polopt.logging.NoLogger"
    group: str | None = None  # accepted (and ignored) so sweeps that set a W&B group also run with logger=none


@dataclass
class RolloutConfig:
    gamma: float = 0.99
    gae_lambda: float = 0.95
    normalize_advantages: bool = True
    scale_rewards: bool = True
    bootstrap_truncated: bool = True  # V(final obs) at time limits; false treats them as terminal
    ranges: ClassVar[dict[str, Range]] = {"gamma": UNIT, "gae_lambda": UNIT}


@dataclass
class Config:
    env: Any = MISSING
    policy: Any = MISSING
    value: Any = MISSING
    updater: Any = MISSING
    logger: Any = MISSING
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    seed: int = 0
    device: str = "auto"
    total_steps: int = 1_000_000
    num_envs: int = 8
    steps_per_env: int = 256
    checkpoint_every: int = 50
    resume: str | None = None
    progress: bool = True
    torch_threads: int | None = 1
    deterministic: bool = False  # torch deterministic algorithms (matters on CUDA; CPU runs repeat anyway)
    nonfinite: str = "skip"  # skip: skipped updates are counted and the run goes on; raise: stop with an error
    ranges: ClassVar[dict[str, Range]] = {"total_steps": AT_LEAST_ONE, "num_envs": AT_LEAST_ONE,
                                          "steps_per_env": AT_LEAST_ONE, "checkpoint_every": AT_LEAST_ONE,
                                          "torch_threads": AT_LEAST_ONE, "seed": NON_NEGATIVE}
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"device": ("auto", "cpu", "cuda"),
                                                      "nonfinite": ("skip", "raise")}


SCHEMAS: dict[str, dict[str, type]] = {
    "env": {"env": EnvConfig},
    "policy": {"mlp": PolicyConfig},
    "value": {"mlp": ValueConfig},
    "logger": {"wandb": WandbLoggerConfig, "none": NoLoggerConfig},
}


def updater_schemas() -> dict[str, type]:
    """Each module in polopt.updaters declares its own ``SCHEMAS = {option name: dataclass}``."""
    import polopt.updaters as package

    schemas: dict[str, type] = {}
    for module in pkgutil.iter_modules(package.__path__):
        schemas.update(getattr(importlib.import_module(f"{package.__name__}.{module.name}"), "SCHEMAS", {}))
    return schemas


def register_schemas() -> None:
    """Stores each schema as ``schema/<group>/<name>`` for the YAML options to extend."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, options in {**SCHEMAS, "updater": updater_schemas()}.items():
        for name, node in options.items():
            store.store(group=f"schema/{group}", name=name, node=node)


def _check_node(node: DictConfig, path: str) -> None:
    schema = OmegaConf.get_type(node)
    for key, allowed_range in getattr(schema, "ranges", {}).items():
        value = node.get(key)
        if value is not None and value not in allowed_range:
            raise ConfigError(f"{path}{key}={value!r} is out of range: it must be {allowed_range}")
    for key, allowed in getattr(schema, "choices", {}).items():
        if node.get(key) not in allowed:
            raise ConfigError(f"{path}{key}={node.get(key)!r} is not allowed: choose one of {allowed}")


def validate(cfg: DictConfig | ListConfig, path: str = "") -> None:
    """Checks every schema's declared ranges and choices; raises ConfigError naming the field."""
    if isinstance(cfg, ListConfig):
        return
    _check_node(cfg, path)
    for key in cfg:
        key = str(key)
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            validate(child, f"{path}{key}.")
