"""The LightningModule: loss, optimizer (configs/optim/, built by outlier_lab/models/optim; decay on
matrices only), warmup + cosine schedule, logging, the non-finite loss guard, and RNG state in
checkpoints."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import lightning as L
import torch
from torchmetrics import MeanMetric

from outlier_lab.errors import ConfigError, check_fields, is_integer, is_number
from outlier_lab.models.checkpoint import upgrade_targets
from outlier_lab.models.compile import CompiledLoss, wants_compile
from outlier_lab.models.gpt import GPT
from outlier_lab.models.optim import build_optimizer, optimizer_spec, weight_decay_groups
from outlier_lab.models.regularizers import Penalties


@dataclass(frozen=True)
class OptimConfig:
    """The warmup + cosine schedule down to min_lr, shared by every optimizer (its values: the
    ``optim`` block of configs/train.yaml), and the optimizer: ``name`` and ``optimizer``, the
    Hydra partial of configs/optim/NAME.yaml (outlier_lab/models/optim/), called with the weight-decay
    groups (decay on matrices only) and ``lr``."""

    lr: float
    min_lr: float
    weight_decay: float
    warmup_steps: int
    decay_steps: int | None
    name: str
    optimizer: dict

    @classmethod
    def from_mapping(cls, optim: Mapping) -> OptimConfig:
        """Exactly the declared keys: a misspelt one would otherwise be ignored, a missing one fail late."""
        if "optimizer" not in optim and "betas" in optim:  # a checkpoint from before configs/optim/: AdamW
            optim = {**{k: v for k, v in optim.items() if k != "betas"}, "name": "adamw", "optimizer": {
                "_target_": "torch.optim.AdamW", "_partial_": True, "betas": list(optim["betas"])}}
        check_fields(optim, cls, "optim", " (optimizer settings go under optim.optimizer)" if "optimizer" in optim else "")
        valid = [f.name for f in fields(cls)]
        if missing := set(valid) - set(optim):
            raise ConfigError(f"missing optim keys {sorted(missing)}; needed: {', '.join(valid)}")
        return cls(**{**optim, "optimizer": optimizer_spec(optim["optimizer"])})

    def __post_init__(self):
        def count(value) -> bool:
            return is_integer(value) and value >= 0

        if not (is_number(self.lr) and self.lr > 0):
            raise ConfigError(f"optim.lr={self.lr!r}: give a positive number")
        if not (is_number(self.min_lr) and 0 <= self.min_lr <= self.lr):
            raise ConfigError(f"optim.min_lr={self.min_lr!r}: give a number from 0 to optim.lr={self.lr}")
        if not (is_number(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"optim.weight_decay={self.weight_decay!r}: give a number >= 0")
        if not count(self.warmup_steps):
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps!r}: give an integer >= 0")
        if self.decay_steps is not None and not (count(self.decay_steps) and self.decay_steps > 0):
            raise ConfigError(f"optim.decay_steps={self.decay_steps!r}: give a positive integer, or null for "
                              f"trainer.max_steps")


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss is NaN or inf; train.py reports it and exits."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"training loss is {value} at step {step}; stopped before the optimizer step")


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, cosine decay to ``min_lr_ratio`` at ``decay_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
    return min_lr_ratio + 0.5 * (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * progress))


class LitGPT(L.LightningModule):
    def __init__(self, model: GPT | Mapping, optim: Mapping, regularizer: Mapping | None = None,
                 compile: str | bool = False):
        super().__init__()
        wants_compile(compile, torch.device("cpu"))  # a bad value fails here, before any data is read
        self.compile = compile  # a run option, not part of the model: not saved in checkpoints
        self.train_loss = None  # the loss training and validation call (on_fit_start)
        self.model = model if isinstance(model, GPT) else GPT(**model)
        self.penalties = Penalties(regularizer)  # the outlier penalties (outlier_lab/models/regularizers.py); none by default
        self.optim = OptimConfig.from_mapping(optim)
        # Plain containers only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(dict(model=self.model.config, optim=asdict(self.optim)))
        self.hparams["regularizer"] = self.penalties.config()  # plain too: {} without penalties
        self.val_loss = MeanMetric()
        # one window of token ids, which Lightning's model summary runs to count FLOPs and show sizes
        self.example_input_array = torch.zeros(1, self.model.config["block_size"], dtype=torch.long)

    @property
    def flops_per_batch(self) -> int:
        """Training FLOPs of one batch (6N per token plus attention, PaLM appendix B); for MFU."""
        c = self.model.config
        per_token = 6 * self.model.num_parameters() + 12 * c["n_layer"] * c["n_embd"] * c["block_size"]
        batch = self.trainer.datamodule.batch_size if self.trainer.datamodule else 1
        return per_token * batch * c["block_size"]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def on_fit_start(self):
        self.train_loss = self.model.loss
        if wants_compile(self.compile, self.device):
            hooked = [name for name, p in self.penalties.items.items() if p.reads_activations]
            if hooked:
                warnings.warn(f"compile: the {', '.join(hooked)} penalty reads activations through forward "
                              "hooks added every step, which would recompile every step; training runs eager", stacklevel=1)
            else:
                self.train_loss = CompiledLoss(self.model, f"attention={self.model.config['attention']['name']}")

    def training_step(self, batch, batch_idx):
        x, y = batch
        with self.penalties.capture(self.model):  # forward hooks, only for penalties that read activations
            loss = self.train_loss(x, y)
        total, sync = loss, self.trainer.world_size > 1
        for name, (value, weighted) in self.penalties.terms(self.model).items():
            self.log(f"train/penalty/{name}", value.detach(), sync_dist=sync)
            self.log(f"train/penalty/{name}/weighted", 0.0 if weighted is None else weighted.detach(), sync_dist=sync)
            total = total if weighted is None else total + weighted
        finite = bool(torch.isfinite(total))
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise NonFiniteLossError(self.global_step, total.item())
        tokens = (self.global_step + 1) * x.numel() * self.trainer.accumulate_grad_batches * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True, sync_dist=sync)  # the cross-entropy, the global mean
        if self.penalties.items:
            self.log("train/loss_total", total, sync_dist=sync)  # what is minimised: loss + the weighted penalties
        self.log("train/tokens", float(tokens))
        return total

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_loss.update((self.train_loss or self.model.loss)(x, y), weight=x.numel())

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss))

    def configure_optimizers(self):
        hp = self.optim
        groups = weight_decay_groups(self.model, hp.weight_decay)
        optimizer = build_optimizer(hp.optimizer, groups, hp.lr, fused=self.device.type == "cuda", model=self.model)
        decay_steps = hp.decay_steps or max(1, self.trainer.max_steps)
        ratio = hp.min_lr / hp.lr
        warmup = min(hp.warmup_steps, decay_steps // 10)  # short smoke runs still get to train
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, decay_steps, ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "train/lr"}}

    # The CPU generator drives dropout; saving it makes resumed runs continue exactly.
    # The data config a checkpoint was trained with (train.py sets it): evaluate.py and
    # analyze.py rebuild the same tokenizer, BOS token and windows from it.
    data_config: dict | None = None

    def on_save_checkpoint(self, checkpoint):
        if self.data_config is not None:
            checkpoint["data_config"] = self.data_config
        checkpoint["rng_cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["rng_cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint):
        self.data_config = upgrade_targets(checkpoint.get("data_config", self.data_config))
        if "rng_cpu" in checkpoint:
            torch.set_rng_state(checkpoint["rng_cpu"])
        if "rng_cuda" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng_cuda"])
