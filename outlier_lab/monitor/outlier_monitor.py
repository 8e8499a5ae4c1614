"""The OutlierMonitor: every few steps it probes a fixed validation batch and logs the
declared outlier metrics (docs/metrics.md) through any Lightning logger, keeps their history
and emergence steps in summary.json, draws the probe figures, and saves its state in
checkpoints so that a resumed run continues its record."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch

from outlier_lab.errors import ConfigError
from outlier_lab.metrics import curve_keys, emergence_defaults
from outlier_lab.metrics.growth import PEAK_CURVE, growth_values
from outlier_lab.metrics.tokens import vocabulary_classes
from outlier_lab.metrics.thresholds import Thresholds
from outlier_lab.probe.ours import data_domains, measure_model
from outlier_lab.summary import log_metrics, update_summary


# drawn beside the residual peak in peak_over_steps.png: the per-entry ratio and the largest |h|
PEAK_COMPANIONS = ("outliers/act/top1_over_median/max", "outliers/act/max_abs/max")


class OutlierMonitor(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the start and end of training), probe
    a fixed validation batch and log activation, weight and attention outlier metrics.
    The first step at which a metric reaches its ``emergence`` threshold is written once to
    the run summary as ``emergence/<metric>``; ``null`` there means it never emerged."""

    def __init__(
        self,
        every_n_steps: int = 150,
        probe_sequences: int = 8,
        thresholds: Thresholds | Mapping | None = None,
        emergence: Mapping[str, float] | None = None,
        plot_every_n_steps: int | None = None,
        plots: bool = True,
    ):
        if every_n_steps <= 0 or probe_sequences <= 0:
            raise ConfigError("callbacks.outlier_monitor: every_n_steps and probe_sequences must be positive")
        self.every_n_steps, self.probe_sequences = every_n_steps, probe_sequences
        self.thresholds = Thresholds.of(thresholds)
        self.token_classes: torch.Tensor | None = None  # per vocabulary id, from the run's tokenizer
        self.domains: dict = {}  # the data module's query domains and optimum on the probe windows
        # the declared thresholds; the config adds or changes some (null drops one)
        merged = {**emergence_defaults(), **dict(emergence or {})}
        self.emergence = {key: value for key, value in merged.items() if value is not None}
        self.plot_every_n_steps, self.plots = plot_every_n_steps, plots
        self.history: list[dict[str, float]] = []
        self.emerged: dict[str, int] = {}
        self.last: tuple[dict, torch.Tensor, dict[str, float]] | None = None  # (partials, tokens, metrics)

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
        values.update(growth_values(self.history))
        update_summary(trainer, values)
        if self.plots:
            self._plot(trainer)

    # -- what ---------------------------------------------------------------------------

    def _measure(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if self.history and self.history[-1]["step"] == step:
            return  # already measured at this step (e.g. start after resume, or end)
        tokens = trainer.datamodule.probe_batch(self.probe_sequences).to(pl_module.device)
        if self.token_classes is None:  # once per run: the probe windows are the same every time
            dm = trainer.datamodule
            self.token_classes = vocabulary_classes(dm.decode_token, dm.vocab_size)
            self.domains = data_domains(dm, tokens)
        parts, metrics = measure_model(pl_module.model, tokens, self.token_classes, thresholds=self.thresholds,
                                        **self.domains)
        unknown = sorted(set(self.emergence) - set(metrics))
        if unknown:  # else it would read as "never emerged" in summary.json
            raise ConfigError(f"callbacks.outlier_monitor.emergence: {', '.join(unknown)} is not a value the probe "
                              f"logs; valid: any logged key, e.g. {', '.join(curve_keys(metrics))}")
        log_metrics(trainer, metrics)
        self.history.append({"step": step, **{k: float(metrics[k]) for k in curve_keys(metrics)}})
        self.last = (parts, tokens.cpu(), metrics)
        for key, threshold in self.emergence.items():
            if key not in self.emerged and metrics.get(key, -math.inf) >= threshold:
                self.emerged[key] = step
                update_summary(trainer, {f"emergence/{key}": step})

    def _plot(self, trainer) -> None:
        from outlier_lab.monitor import plots

        parts, tokens, metrics = self.last
        labels = [trainer.datamodule.decode_token(int(t)) for t in tokens[0]]
        figures = plots.probe_figures(parts, metrics, labels, trainer.global_step)
        keys = curve_keys(self.history[-1])
        figures["outliers_over_steps"] = plots.history(self.history, keys, "Outlier metrics over training")
        figures["peak_over_steps"] = plots.history(self.history, [PEAK_CURVE, *PEAK_COMPANIONS],
                                                   "The first token's residual peak and the largest entries")
        plots.save_figures(figures, Path(trainer.default_root_dir) / "plots", trainer.loggers, trainer.global_step)

    # -- resume -------------------------------------------------------------------------

    def state_dict(self):
        return {"history": self.history, "emerged": self.emerged}

    def load_state_dict(self, state_dict):
        self.history, self.emerged = list(state_dict["history"]), dict(state_dict["emerged"])
