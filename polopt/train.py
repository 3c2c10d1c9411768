"""Command-line entry point: ``python -m polopt [group=option ...] [key=value ...]``."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from polopt.config import ConfigError, register_schemas, validate
from polopt.guards import NonFiniteError
from polopt.rollout import NonFiniteEnvError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_schemas()


def run(cfg: DictConfig, run_dir: Path) -> Path:
    """Validates, builds and trains; returns the final checkpoint path."""
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
    logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True))
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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as err:
        print(f"Config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (NonFiniteError, NonFiniteEnvError) as err:
        print(f"Stopped: {err}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
