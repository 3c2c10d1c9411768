"""Loading the runs of a Hydra sweep (or any folder of run directories) from their local files.

A run directory holds ``.hydra/`` (overrides.yaml, hydra.yaml, config.yaml), ``metrics.jsonl`` and
``status.json``; nothing here needs W&B.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from polopt.logging import read_metrics

# Overrides that are not hyperparameters of the method: the seed, and Hydra's own settings.
NOT_PARAMETERS = ("seed", "hydra")


@dataclass
class Run:
    """One training run: what was chosen, how it ended and what it logged."""

    path: Path
    name: str
    updater: str
    env: str
    seed: int | None
    params: dict[str, str]  # key=value overrides other than group choices, seed and hydra.*
    status: str  # completed | failed | interrupted | unknown (no status.json: killed or still running)
    error: str | None
    group: str | None = None  # the W&B group it logged to (logger.group)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric; NaN where a row does not have it (or it was not finite)."""
        steps = np.array([row["step"] for row in self.rows], dtype=np.float64)
        values = np.array([_number(row.get(key)) for row in self.rows], dtype=np.float64)
        return steps, values


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def parse_override(text: str) -> tuple[str, str] | None:
    """``key=value`` → (key, value) without Hydra's ``+``/``++`` prefixes; None for deletions (``~key``)."""
    if text.startswith("~") or "=" not in text:
        return None
    key, value = text.split("=", 1)
    return key.lstrip("+"), value


def load_run(path: Path, root: Path) -> Run:
    """Reads one run directory (written by ``python -m polopt``)."""
    hydra = (_read_yaml(path / ".hydra" / "hydra.yaml") or {}).get("hydra", {})
    choices: dict[str, Any] = hydra.get("runtime", {}).get("choices", {})
    groups = {key for key in choices if not key.startswith("hydra/")}
    config = _read_yaml(path / "config_resolved.yaml") or _read_yaml(path / ".hydra" / "config.yaml") or {}
    params = {}
    for text in _read_yaml(path / ".hydra" / "overrides.yaml") or []:
        parsed = parse_override(str(text))
        if parsed and parsed[0] not in groups and parsed[0].split(".")[0] not in NOT_PARAMETERS:
            params[parsed[0]] = parsed[1]
    status_file = path / "status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {"status": "unknown"}
    metrics = path / "metrics.jsonl"
    seed = config.get("seed")
    return Run(path=path, name=str(path.relative_to(root)) if path != root else path.name,
               updater=str(choices.get("updater", "?")), env=str(choices.get("env", "?")),
               seed=int(seed) if isinstance(seed, int) else None, params=params,
               status=str(status.get("status", "unknown")), error=status.get("error"),
               group=(config.get("logger") or {}).get("group"),
               rows=read_metrics(metrics) if metrics.is_file() else [])


def _job_order(path: Path) -> tuple[int, str]:
    match = re.match(r"(\d+)_", path.name)
    return (int(match.group(1)) if match else 1 << 30, str(path))


def find_run_dirs(root: Path, exclude: Path | None = None) -> list[Path]:
    """Every directory under ``root`` (itself included) that Hydra ran a job in, in job order."""
    found = {hydra_dir.parent for hydra_dir in root.rglob(".hydra") if hydra_dir.is_dir()}
    if exclude is not None:
        found = {p for p in found if exclude.resolve() not in p.resolve().parents}
    return sorted(found, key=_job_order)


def load_runs(root: Path | str, exclude: Path | None = None) -> list[Run]:
    root = Path(root)
    return [load_run(path, root) for path in find_run_dirs(root, exclude)]


def varying_params(runs: list[Run]) -> list[str]:
    """Override keys whose value is not the same in every run (in first-seen order)."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.params))
    return [k for k in keys if len({run.params.get(k) for run in runs}) > 1]


def short_keys(keys: list[str]) -> dict[str, str]:
    """The last dotted part of each key (``updater.step_rule.max_kl`` → ``max_kl``) where that is
    unambiguous, else the key without its ``updater.`` prefix."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k.removeprefix("updater.")) for k, s in zip(keys, last, strict=True)}


def method_labels(runs: list[Run]) -> dict[str, str]:
    """Method of each run (by path): its updater plus the swept values that are not the seed, e.g.
    ``trpo max_kl=0.01 damping=0.1`` — runs with equal labels are seeds of one method."""
    keys = varying_params(runs)
    names = short_keys(keys)
    labels = {}
    for run in runs:
        parts = [f"{names[k]}={run.params[k]}" for k in keys if k in run.params]
        labels[str(run.path)] = " ".join([run.updater, *parts])
    return labels


def numeric(value: str | None) -> float | None:
    """The override value as a number, None when it is not one."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
