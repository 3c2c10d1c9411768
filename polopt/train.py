"""Command-line entry point: ``python -m polopt [group=option ...] [key=value ...]``."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from polopt.config import ConfigError, register_schemas, validate
from polopt.guards import NonFiniteError
from polopt.rollout import NonFiniteEnvError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_schemas()


def run(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None = None) -> Path:
    """Validates, builds and trains; returns the final checkpoint path.

    ``choices`` are the chosen config-group options (updater, env, ...); the logger uses them as
    job type and tags."""
    from hydra.utils import instantiate

    from polopt.trainer import Trainer, build

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(missing)} (set them as key=value)")
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config_resolved.yaml", resolve=True)
    parts = build(cfg)
    logger = instantiate(cfg.logger)
    trainer = Trainer(parts, logger, run_dir)
    if cfg.resume:
        trainer.load(cfg.resume)
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    logger.start(run_dir, {**config, "choices": choices or {}})
    exit_code = 1
    try:
        trainer.train()
        exit_code = 130 if trainer.interrupted else 0
    finally:
        logger.finish(exit_code)
        parts.envs.close()
    if trainer.interrupted:
        print(f"interrupted: checkpoint written to {trainer.checkpoint_path}", file=sys.stderr)
        raise SystemExit(130)
    return trainer.checkpoint_path


def write_status(run_dir: Path, status: str, error: str | None = None) -> None:
    """``status.json`` in the run directory: how the run ended (reports list failed runs from it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.json").write_text(json.dumps({"status": status, "error": error}) + "\n")


EXIT_CODES: dict[type[BaseException], tuple[int, str]] = {
    ConfigError: (2, "Config error"), NonFiniteError: (3, "Stopped"), NonFiniteEnvError: (3, "Stopped")}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    choices = {k: str(v) for k, v in hydra_cfg.runtime.choices.items() if not k.startswith(("hydra", "schema"))}
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        run(cfg, run_dir, choices)
        write_status(run_dir, "completed")
    except SystemExit as err:
        write_status(run_dir, "interrupted" if err.code == 130 else "failed", f"exit code {err.code}")
        raise
    except Exception as err:
        write_status(run_dir, "failed", "".join(traceback.format_exception_only(err)).strip())
        code, label = next((v for k, v in EXIT_CODES.items() if isinstance(err, k)), (1, "Failed"))
        if not sweeping and code == 1:
            raise
        # In a sweep a failed job is recorded and the other jobs go on.
        print(f"{label}: {err}" + (f" [job {hydra_cfg.job.num}: {run_dir}]" if sweeping else ""), file=sys.stderr)
        if not sweeping:
            raise SystemExit(code) from None


if __name__ == "__main__":
    main()
