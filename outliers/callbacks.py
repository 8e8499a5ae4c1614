"""Lightning callbacks that watch outliers emerge and measure how fast a run converges.

Metric definitions: docs/metrics.md. Both callbacks log through
any Lightning logger and keep their run-level values in summary.json (outliers.summary);
their state is saved in checkpoints, so resumed runs continue their records.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch

from errors import ConfigError
from outliers.metrics import Metric, curve_keys, declare, emergence_defaults
from outliers.metrics.tokens import vocabulary_classes
from outliers.probes import ProbeResult, measure_model
from outliers.summary import log_metrics, update_summary

class OutlierMonitor(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the start and end of training), probe
    a fixed validation batch and log activation, weight and attention outlier metrics.
    The first step at which a metric reaches its ``emergence`` threshold is written once to
    the run summary as ``emergence/<metric>``; ``null`` there means it never emerged."""

    def __init__(
        self,
        every_n_steps: int = 150,
        probe_sequences: int = 8,
        massive_abs: float = 100.0,
        massive_ratio: float = 1000.0,
        token_ratio: float = 1000.0,
        sink_eps: float = 0.3,
        sink_tokens: int | None = 64,
        emergence: Mapping[str, float] | None = None,
        plot_every_n_steps: int | None = None,
        plots: bool = True,
    ):
        if every_n_steps <= 0 or probe_sequences <= 0:
            raise ConfigError("callbacks.outlier_monitor: every_n_steps and probe_sequences must be positive")
        self.every_n_steps, self.probe_sequences = every_n_steps, probe_sequences
        self.thresholds = dict(massive_abs=massive_abs, massive_ratio=massive_ratio, token_ratio=token_ratio,
                               sink_eps=sink_eps, sink_tokens=sink_tokens)
        self.token_classes: torch.Tensor | None = None  # per vocabulary id, from the run's tokenizer
        # the declared thresholds; the config adds or changes some (null drops one)
        merged = {**emergence_defaults(), **dict(emergence or {})}
        self.emergence = {key: value for key, value in merged.items() if value is not None}
        self.plot_every_n_steps, self.plots = plot_every_n_steps, plots
        self.history: list[dict[str, float]] = []
        self.emerged: dict[str, int] = {}
        self.last: tuple[ProbeResult, torch.Tensor, dict[str, float]] | None = None

    # -- when ---------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module):
        self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every_n_steps == 0:
            self._measure(trainer, pl_module)
        if self.plots and self.plot_every_n_steps and step % self.plot_every_n_steps == 0 and self.last:
            self._plot(trainer)

    def on_train_end(self, trainer, pl_module):
        self._measure(trainer, pl_module)
        values = {f"emergence/{k}": self.emerged.get(k) for k in self.emergence}
        values.update({k: v for k, v in self.history[-1].items() if k != "step"})
        update_summary(trainer, values)
        if self.plots:
            self._plot(trainer)

    # -- what ---------------------------------------------------------------------------

    def _measure(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if self.history and self.history[-1]["step"] == step:
            return  # already measured at this step (e.g. start after resume, or end)
        tokens = trainer.datamodule.probe_batch(self.probe_sequences).to(pl_module.device)
        if self.token_classes is None:  # once per run: decode every id of the run's own tokenizer
            dm = trainer.datamodule
            self.token_classes = vocabulary_classes(dm.decode_token, dm.vocab_size)
        result, metrics = measure_model(pl_module.model, tokens, self.token_classes, **self.thresholds)
        log_metrics(trainer, metrics)
        self.history.append({"step": step, **{k: float(metrics[k]) for k in curve_keys()}})
        self.last = (result, tokens.cpu(), metrics)
        for key, threshold in self.emergence.items():
            if key not in self.emerged and metrics.get(key, -math.inf) >= threshold:
                self.emerged[key] = step
                update_summary(trainer, {f"emergence/{key}": step})

    def _plot(self, trainer) -> None:
        from outliers import plots

        result, tokens, metrics = self.last
        labels = [trainer.datamodule.decode_token(int(t)) for t in tokens[0]]
        figures = plots.probe_figures(result, metrics, labels, trainer.global_step)
        figures["outliers_over_steps"] = plots.history(self.history, curve_keys(), "Outlier metrics over training")
        plots.save_figures(figures, Path(trainer.default_root_dir) / "plots", trainer.loggers, trainer.global_step)

    # -- resume -------------------------------------------------------------------------

    def state_dict(self):
        return {"history": self.history, "emerged": self.emerged}

    def load_state_dict(self, state_dict):
        self.history, self.emerged = list(state_dict["history"]), dict(state_dict["emerged"])


declare(
    Metric("convergence/final_val_loss", "final validation loss", column="final val loss"),
    Metric("convergence/final_val_ppl", "final validation perplexity", column="final ppl"),
    Metric("convergence/val_loss_auc", "area under the val-loss curve over the span", column="val-loss AUC"),
)


class ConvergenceMonitor(L.Callback):
    """Step, tokens and wall seconds at which the validation loss first reaches each target,
    the area under the validation-loss curve (trapezoid over steps, divided by the span:
    the mean loss over training, lower = faster), and the final loss and perplexity.
    A validation run after training (train.py's final evaluation) at a later step than the
    last one during training extends the curve and updates the final values."""

    def __init__(self, targets: list[float] | tuple[float, ...] = (2.5, 2.0, 1.8, 1.6, 1.5)):
        self.targets = sorted(targets, reverse=True)
        self.curve: list[tuple[int, float]] = []
        self.reached: dict[str, float] = {}
        self.seconds = 0.0  # training wall time before this process (restored on resume)
        self._start: float | None = None
        self._train_seconds: float | None = None  # frozen when training ends

    def on_train_start(self, trainer, pl_module):
        self._start, self._train_seconds = time.perf_counter(), None

    def _elapsed(self) -> float:
        if self._train_seconds is not None:
            return self._train_seconds
        return self.seconds + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn not in ("fit", "validate"):
            return
        if "val/loss" not in trainer.callback_metrics:
            return
        step, loss = trainer.global_step, float(trainer.callback_metrics["val/loss"])
        if self.curve and self.curve[-1][0] >= step:
            return
        self.curve.append((step, loss))
        tokens_per_step = trainer.datamodule.batch_size * trainer.datamodule.block_size
        tokens_per_step *= trainer.accumulate_grad_batches * trainer.world_size
        new = {}
        for target in self.targets:
            key = f"convergence/step_to_{target:g}"
            if key not in self.reached and loss <= target:
                new[key] = step
                new[f"convergence/tokens_to_{target:g}"] = step * tokens_per_step
                new[f"convergence/seconds_to_{target:g}"] = round(self._elapsed(), 2)
        self.reached.update(new)
        update_summary(trainer, new)
        if self._train_seconds is not None:  # a validation after training: refresh the finals
            self._write_final(trainer)

    def on_train_end(self, trainer, pl_module):
        self._train_seconds = self._elapsed()
        self._write_final(trainer)

    def _write_final(self, trainer) -> None:
        if not self.curve:
            return
        values = {"convergence/val_loss_auc": self.auc(), "convergence/final_val_loss": self.curve[-1][1],
                  "convergence/final_val_ppl": math.exp(self.curve[-1][1]),
                  "convergence/train_seconds": round(self._elapsed(), 2)}
        values.update({f"convergence/step_to_{t:g}": self.reached.get(f"convergence/step_to_{t:g}")
                       for t in self.targets})
        log_metrics(trainer, {k: v for k, v in values.items() if v is not None})
        update_summary(trainer, values)

    def auc(self) -> float:
        if len(self.curve) == 1:
            return self.curve[0][1]
        area = sum((s1 - s0) * (l0 + l1) / 2 for (s0, l0), (s1, l1) in zip(self.curve, self.curve[1:]))
        return area / (self.curve[-1][0] - self.curve[0][0])

    def state_dict(self):
        return {"curve": self.curve, "reached": self.reached, "seconds": self._elapsed()}

    def load_state_dict(self, state_dict):
        self.curve = [tuple(x) for x in state_dict["curve"]]
        self.reached, self.seconds = dict(state_dict["reached"]), float(state_dict["seconds"])
