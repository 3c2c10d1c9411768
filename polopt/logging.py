"""Metric sinks: a local JSON-lines file (always) and Weights & Biases (optional, offline by default)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol


class Logger(Protocol):
    def start(self, run_dir: Path, config: dict[str, Any]) -> None: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class MetricsFile:
    """Appends one JSON object per iteration to ``metrics.jsonl`` (non-finite values become null)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def log(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path | str) -> list[dict[str, Any]]:
    """Reads a ``metrics.jsonl`` file back as a list of rows."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class NoLogger:
    """Logs nothing beyond the local metrics file."""

    def __init__(self, group: str | None = None):
        self.group = group

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger:
    """Weights & Biases run. ``mode="offline"`` (default) never touches the network or asks for a key;
    ``wandb sync`` uploads later. ``mode="online"`` logs live; ``mode="disabled"`` turns it off."""

    def __init__(self, project: str = "polopt", mode: str = "offline", entity: str | None = None,
                 group: str | None = None, job_type: str | None = None, name: str | None = None,
                 tags: list[str] | None = None):
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline, online or disabled, got {mode!r}")
        self.kwargs: dict[str, Any] = {"project": project, "mode": mode, "entity": entity, "group": group,
                       "job_type": job_type, "name": name, "tags": list(tags or [])}
        self.run: Any = None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        if self.kwargs["mode"] == "offline":
            os.environ.setdefault("WANDB_SILENT", "true")
        # Job type and tags default to the chosen updater and env, so sweeps filter and group by them.
        choices = config.get("choices", {})
        kwargs = dict(self.kwargs)
        kwargs["job_type"] = kwargs["job_type"] or choices.get("updater")
        kwargs["tags"] = sorted({*kwargs["tags"], *(choices[k] for k in ("updater", "env") if k in choices)})
        self.run = wandb.init(dir=str(run_dir), config=config, reinit="finish_previous", **kwargs)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
