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
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from rich import get_console
from rich.markup import escape

from outlier_lab.data.interface import check_data_module
from outlier_lab.errors import ConfigError, exit_on_config_error, is_integer, is_number
from outlier_lab.models.checkpoint import load_checkpoint
from outlier_lab.trainer.csv_logger import ResumableCSVLogger
from outlier_lab.trainer.step_budget import Step, check_step
from outlier_lab.models.lit_gpt import NonFiniteLossError
from outlier_lab.compression import check_protocols, score_on_datamodule, print_results
from outlier_lab.metrics.thresholds import register_config
from outlier_lab.models.attention import get_attention_class, register_configs as register_attention_configs
from outlier_lab.summary import log_metrics, update_summary
from outlier_lab.sweep import in_multirun, job_dirname, record_failure, sweep_group

# rich's own console, fetched where it is used: a parallel launcher (joblib) pickles this
# script's functions with the globals they name, and a Console (it holds a lock) cannot be
# pickled.
console = get_console
CONFIGS = Path(__file__).resolve().parent / "configs"
register_config()  # the thresholds group of configs/train.yaml
register_attention_configs()  # the attention_options group that configs/attention/ extends


def quiet_lightning() -> None:
    """Silence notices that do not apply to this project's runs."""
    # Our sampler resumes the data position itself (outlier_lab/data/datamodule.py).
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    # ResumableCSVLogger writes the kept rows of metrics.csv back; wandb/ shares the run directory.
    warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
    # A resumed run writes into its own checkpoints/ again, by design.
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # Tips to install litmodels and the like, and the TPU line of a machine without TPUs.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda r: "💡 Tip" not in r.getMessage() and not r.getMessage().startswith("TPU available: False"))


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


def compose_config(output_dir: str | Path, *overrides: str) -> DictConfig:
    """The config that `python train.py OVERRIDES` runs with, its run directory output_dir;
    for code that calls train() itself (tests, benchmarks), from any working directory."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=[f"paths.output_dir={output_dir}", *overrides])


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> tuple[str | None, int | None]:
    """``auto`` -> the newest checkpoint of this run directory that loads (last.ckpt first; a
    file that does not load, say one cut short by a full disk, is skipped with a warning);
    a path must exist and load. Returns the path and the global step it holds (None when
    starting fresh)."""
    if ckpt_path in (None, "", "null"):
        return None, None
    expected = "a train.py .ckpt file, or ckpt_path=auto or null"
    if ckpt_path != "auto":
        return str(Path(ckpt_path)), saved_step(ckpt_path, expected)
    directory = output_dir / "checkpoints"
    last = directory / "last.ckpt"
    others = sorted(set(directory.glob("*.ckpt")) - {last}, key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in [last, *others] if last.is_file() else others:
        try:
            return str(candidate), saved_step(candidate, expected)
        except ConfigError as e:
            console().print(f"[bold yellow]Skipping[/] an unusable checkpoint: {escape(str(e))}")
    return None, None


def saved_step(path, expected: str) -> int:
    """The global step a resumable checkpoint holds; a ConfigError when it does not load."""
    # mmap: only the step is read here; Lightning loads the tensors when it resumes
    checkpoint = load_checkpoint(path, expected, required_keys=("state_dict", "loops"), mmap=True)
    return int(checkpoint.get("global_step", 0))


def check_run_keys(cfg: DictConfig) -> None:
    """The top-level and trainer keys that would otherwise fail deep inside Lightning or torch."""
    if not is_integer(cfg.seed):
        raise ConfigError(f"seed={cfg.seed!r}: give an integer")
    trainer = cfg.trainer
    if not (is_integer(trainer.get("max_steps")) and trainer.max_steps > 0):
        raise ConfigError(f"trainer.max_steps={trainer.get('max_steps')!r}: give a positive number of steps")
    interval = trainer.get("val_check_interval")
    if interval is not None and not (is_number(interval) and interval > 0 and (is_integer(interval) or interval <= 1)):
        raise ConfigError(f"trainer.val_check_interval={interval!r}: give a positive number of steps, "
                          f"or a fraction of an epoch in (0, 1]")


def set_threads(threads) -> None:
    """torch's intra-op threads for this run (null: torch's default, every core). Tiny models
    train faster as parallel single-threaded jobs than as one job on all cores."""
    if threads is None:
        return
    if not is_integer(threads) or threads < 1:
        raise ConfigError(f"torch_threads={threads!r}: give a positive integer, or null for torch's default")
    torch.set_num_threads(threads)


def build_loggers(cfg: DictConfig, output_dir: Path, resume_step: int | None) -> list[Logger]:
    """The configured loggers plus metrics.csv, which every run writes: it is kept across
    resumption (ResumableCSVLogger) and read by the reports, so it is not a config option."""
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    loggers.append(ResumableCSVLogger(save_dir=output_dir, name="", version="", resume_step=resume_step))
    return loggers


def check_step_budget(cfg: DictConfig, model, datamodule) -> None:
    """Refuse a step that cannot fit the machine, warn about one that takes minutes
    (outlier_lab/trainer/step_budget.py), before any data is read."""
    c, monitor = model.config, (cfg.get("callbacks") or {}).get("outlier_monitor")
    step = Step(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], block_size=c["block_size"],
                vocab_size=c["vocab_size"], parameters=model.num_parameters(), batch_size=datamodule.batch_size,
                stores_attention_maps=get_attention_class(c["attention"]["name"]).family != "softmax",
                probe_sequences=int(monitor.probe_sequences) if monitor else 0)
    on_gpu = cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    check_step(step, torch.device("cuda" if on_gpu else "cpu"), lambda text: console().print(f"[yellow]Warning:[/] {text}"))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, validate, and return the final validation metrics."""
    output_dir = Path(cfg.paths.output_dir)
    quiet_lightning()
    check_protocols(cfg.get("eval", {}).get("compression"))
    check_run_keys(cfg)
    set_threads(cfg.get("torch_threads"))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    check_data_module(datamodule)
    module = hydra.utils.instantiate(cfg.module, model={"vocab_size": datamodule.vocab_size})
    module.data_config = OmegaConf.to_container(cfg.data, resolve=True)  # saved in every checkpoint
    check_step_budget(cfg, module.model, datamodule)
    ckpt_path, resume_step = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = build_loggers(cfg, output_dir, resume_step)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    console().print(f"[bold]Run directory:[/] {escape(str(output_dir))}")
    if ckpt_path:
        console().print(f"[bold]Resuming[/] from {escape(ckpt_path)} (step {resume_step})")
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.checkpoint_callback is not None:  # last.ckpt = the final state, not the last validation's
            trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt", weights_only=False)
        results = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        if trainer.is_global_zero and cfg.get("eval", {}).get("compression"):
            compressed = score_on_datamodule(module.model, datamodule, cfg.eval)
            log_metrics(trainer, compressed)
            update_summary(trainer, compressed)
            print_results(compressed, console())
    finally:
        if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
            import wandb

            wandb.finish()
    final = {"val/loss": float(results["val/loss"]), "val/ppl": math.exp(results["val/loss"])}
    if trainer.is_global_zero:
        console().print(
            f"[bold green]Done.[/] final val loss {final['val/loss']:.4f} (ppl {final['val/ppl']:.3f}); "
            f"unigram baseline {datamodule.unigram_loss:.4f}"
            + (f", optimum {datamodule.optimum_loss:.4f}" if hasattr(datamodule, "optimum_loss") else "") + "\n"
            f"[bold]Outputs:[/] {escape(str(output_dir))}  (metrics.csv, summary.json, plots/, checkpoints/)"
        )
    return final


def run(cfg: DictConfig) -> float:
    """train() with user errors reported in one line (exit 2) and a NaN stop explained (exit 1)."""
    try:
        with exit_on_config_error(console()):
            return train(cfg)["val/loss"]
    except NonFiniteLossError as e:
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint had been written yet"
        console().print(f"[bold red]Stopped:[/] {escape(f'{e}. {kept}')}; lower optim.lr or check the data.")
        sys.exit(1)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if not in_multirun():
        return run(cfg)
    try:  # in a sweep, one failing job must not stop the others
        return run(cfg)
    except (Exception, SystemExit) as e:
        record_failure(cfg.paths.output_dir, e)
        console().print(f"[bold red]Job failed[/] ({escape(type(e).__name__)}); the sweep goes on. "
                      f"Details: {escape(str(Path(cfg.paths.output_dir) / 'FAILED'))}")
        return None


if __name__ == "__main__":
    main()
