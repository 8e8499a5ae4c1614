"""The LightningModule: loss, optimizer (AdamW, decay on matrices only), warmup + cosine
schedule, logging, the non-finite loss guard, and RNG state in checkpoints."""

from __future__ import annotations

import math
from collections.abc import Mapping

import lightning as L
import torch
from torchmetrics import MeanMetric

from errors import ConfigError
from models.gpt import GPT

DEFAULT_OPTIM = dict(lr=1e-3, min_lr=1e-4, weight_decay=0.1, betas=[0.9, 0.95], warmup_steps=100, decay_steps=None)


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
    def __init__(self, model: GPT | Mapping, optim: Mapping | None = None):
        super().__init__()
        self.model = model if isinstance(model, GPT) else GPT(**model)
        unknown = set(optim or {}) - set(DEFAULT_OPTIM)
        if unknown:
            raise ConfigError(f"unknown optim keys {sorted(unknown)}; valid: {', '.join(DEFAULT_OPTIM)}")
        optim = {**DEFAULT_OPTIM, **(optim or {})}
        optim["betas"] = list(optim["betas"])
        # Plain containers only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(dict(model=self.model.config, optim=optim))
        self.optim = optim
        self.val_loss = MeanMetric()

    @property
    def flops_per_batch(self) -> int:
        """Training FLOPs of one batch (6N per token plus attention, PaLM appendix B); for MFU."""
        c = self.model.config
        per_token = 6 * self.model.num_parameters() + 12 * c["n_layer"] * c["n_embd"] * c["block_size"]
        batch = self.trainer.datamodule.batch_size if self.trainer.datamodule else 1
        return per_token * batch * c["block_size"]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.model.loss(x, y)
        finite = bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise NonFiniteLossError(self.global_step, loss.item())
        tokens = (self.global_step + 1) * x.numel() * self.trainer.accumulate_grad_batches * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True, sync_dist=self.trainer.world_size > 1)  # the global mean
        self.log("train/tokens", float(tokens))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_loss.update(self.model.loss(x, y), weight=x.numel())

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss))

    def configure_optimizers(self):
        hp = self.optim
        matrices = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        others = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": matrices, "weight_decay": hp["weight_decay"]}, {"params": others, "weight_decay": 0.0}]
        fused = self.device.type == "cuda"
        optimizer = torch.optim.AdamW(groups, lr=hp["lr"], betas=tuple(hp["betas"]), fused=fused)
        decay_steps = hp["decay_steps"] or max(1, self.trainer.max_steps)
        ratio = hp["min_lr"] / hp["lr"]
        warmup = min(hp["warmup_steps"], decay_steps // 10)  # short smoke runs still get to train
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, decay_steps, ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "train/lr"}}

    # The CPU generator drives dropout; saving it makes resumed runs continue exactly.
    def on_save_checkpoint(self, checkpoint):
        checkpoint["rng_cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["rng_cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint):
        if "rng_cpu" in checkpoint:
            torch.set_rng_state(checkpoint["rng_cpu"])
        if "rng_cuda" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng_cuda"])
