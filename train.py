"""Train a small GPT with a chosen attention variant.

    python train.py                                  # nano GPT, softmax, offline corpus, CPU
    python train.py attention=explicit_scale
    python train.py -m attention=softmax,explicit_scale seed=0,1,2

Every object comes from the configs in configs/ through hydra.utils.instantiate.
"""

from __future__ import annotations

import hashlib
import logging
import math
import netrc
import os
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape

from models.csv_logger import ResumableCSVLogger
from errors import ConfigError, exit_on_config_error
from models.lit_gpt import NonFiniteLossError
from outliers.compression import check_protocols
from outliers.evaluation import compression_results, print_results
from outliers.summary import log_metrics, update_summary
from outliers.sweep import in_multirun, job_dirname, record_failure, sweep_group

console = Console()


def quiet_lightning() -> None:
    """Silence notices that do not apply to this project's runs."""
    # Our sampler resumes the data position itself (data/datamodule.py).
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    # metrics.csv is kept on purpose by ResumableCSVLogger; wandb/ shares the run directory.
    warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "💡 Tip" not in r.getMessage())


def wandb_offline() -> bool:
    """Offline unless the user has wandb credentials. When WANDB_MODE is set, wandb itself
    obeys it (online, offline or disabled), so Lightning must not override it."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is None
    except (OSError, netrc.NetrcParseError):
        return True


OmegaConf.register_new_resolver("wandb_offline", wandb_offline, replace=True)


def run_id(output_dir: str) -> str:
    """A stable id for a run directory, so a resumed run continues the same wandb run."""
    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:12]


OmegaConf.register_new_resolver("run_id", run_id, replace=True)
OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)
OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> tuple[str | None, int | None]:
    """``auto`` -> this run directory's last.ckpt if it exists; a path must exist and load.
    Returns the path and the global step it holds (None when starting fresh)."""
    if ckpt_path in (None, "", "null"):
        return None, None
    if ckpt_path == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            return None, None
        ckpt_path = str(last)
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}; use ckpt_path=auto, null, or an existing .ckpt file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # any failure to unpickle means the file is unusable
        raise ConfigError(f"checkpoint {path} is corrupt or not a safe Lightning checkpoint: {e}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise ConfigError(f"checkpoint {path} is not a Lightning training checkpoint (no state_dict/loops)")
    return str(path), int(checkpoint.get("global_step", 0))


def build_loggers(cfg: DictConfig, output_dir: Path, resume_step: int | None) -> list[Logger]:
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    loggers = [lg for lg in loggers if not isinstance(lg, CSVLogger)]  # one CSV logger, ours:
    loggers.append(ResumableCSVLogger(save_dir=output_dir, name="", version="", resume_step=resume_step))
    return loggers


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, validate, and return the final validation metrics."""
    output_dir = Path(cfg.paths.output_dir)
    quiet_lightning()
    check_protocols(cfg.get("eval", {}).get("compression"))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.module, model={"vocab_size": datamodule.vocab_size})
    ckpt_path, resume_step = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = build_loggers(cfg, output_dir, resume_step)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    console.print(f"[bold]Run directory:[/] {escape(str(output_dir))}")
    if ckpt_path:
        console.print(f"[bold]Resuming[/] from {escape(ckpt_path)} (step {resume_step})")
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.checkpoint_callback is not None:  # last.ckpt = the final state, not the last validation's
            trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")
        results = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        if trainer.is_global_zero and cfg.get("eval", {}).get("compression"):
            compressed = compression_results(module.model, datamodule, cfg.eval)
            log_metrics(trainer, compressed)
            update_summary(trainer, compressed)
            print_results(compressed, console)
    finally:
        if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
            import wandb

            wandb.finish()
    final = {"val/loss": float(results["val/loss"]), "val/ppl": math.exp(results["val/loss"])}
    if trainer.is_global_zero:
        console.print(
            f"[bold green]Done.[/] final val loss {final['val/loss']:.4f} (ppl {final['val/ppl']:.3f}); "
            f"unigram baseline {datamodule.unigram_loss:.4f}\n"
            f"[bold]Outputs:[/] {escape(str(output_dir))}  (metrics.csv, summary.json, plots/, checkpoints/)"
        )
    return final


def run(cfg: DictConfig) -> float:
    """train() with user errors reported in one line (exit 2) and a NaN stop explained (exit 1)."""
    try:
        with exit_on_config_error(console):
            return train(cfg)["val/loss"]
    except NonFiniteLossError as e:
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint had been written yet"
        console.print(f"[bold red]Stopped:[/] {escape(f'{e}. {kept}')}; lower optim.lr or check the data.")
        sys.exit(1)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if not in_multirun():
        return run(cfg)
    try:  # in a sweep, one failing job must not stop the others
        return run(cfg)
    except (Exception, SystemExit) as e:
        record_failure(cfg.paths.output_dir, e)
        console.print(f"[bold red]Job failed[/] ({escape(type(e).__name__)}); the sweep goes on. "
                      f"Details: {escape(str(Path(cfg.paths.output_dir) / 'FAILED'))}")
        return None


if __name__ == "__main__":
    main()
