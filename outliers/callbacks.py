"""Lightning callbacks that watch outliers emerge and measure how fast a run converges.

Metric definitions: DESIGN.md section 3 and docs/metrics.md. Both callbacks log through
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

from models.errors import ConfigError
from outliers import metrics as M
from outliers.probes import ProbeResult, probe
from outliers.summary import log_metrics, update_summary

DEFAULT_EMERGENCE = {"outliers/act/top1_over_median/max": 100.0, "outliers/attn/sink_rate": 0.5}
# The summary keys drawn over training steps.
HISTORY_KEYS = (
    "outliers/act/top1_over_median/max", "outliers/act/avg_kurtosis", "outliers/act/max_inf_norm",
    "outliers/down/top1_over_median/max", "outliers/weight/down_proj_col_ratio/max",
    "outliers/attn/first_token_share/max", "outliers/attn/sink_rate", "outliers/attn/null_mass/mean",
)


def outlier_metrics(
    result: ProbeResult, model: torch.nn.Module, tokens: torch.Tensor | None = None, *,
    massive_abs: float = 100.0, massive_ratio: float = 1000.0, token_ratio: float = 1000.0, sink_eps: float = 0.3,
) -> dict[str, float]:
    """Every per-layer and summary metric of one probe pass, under stable names."""
    out: dict[str, float] = {}
    thresholds = dict(abs_threshold=massive_abs, median_ratio=massive_ratio, token_ratio=token_ratio)
    for kind, tensors in (("act", result.residual), ("down", result.down_input)):
        per_layer = [M.activation_stats(h, **thresholds) for h in tensors]
        for layer, stats in enumerate(per_layer):
            for name, value in stats.items():
                out[f"outliers/{kind}/{name}/layer_{layer}"] = value
        out[f"outliers/{kind}/top1_over_median/max"] = max(s["top1_over_median"] for s in per_layer)
        out[f"outliers/{kind}/massive/total"] = sum(s["massive"] for s in per_layer)
        out[f"outliers/{kind}/massive_ratio/total"] = sum(s["massive_ratio"] for s in per_layer)
        out[f"outliers/{kind}/kurtosis/max"] = max(s["kurtosis"] for s in per_layer)
    # Bondarenko et al.: kurtosis averaged over all tracked tensors, inf norm max over block outputs
    kurt = [v for k, v in out.items() if "/kurtosis/layer_" in k]
    out["outliers/act/avg_kurtosis"] = sum(kurt) / len(kurt)
    out["outliers/act/max_inf_norm"] = max(M.inf_norm(h) for h in result.residual)

    worst = max(range(len(result.residual)), key=lambda l: out[f"outliers/act/top1_over_median/layer_{l}"])
    top = M.top_channels(result.residual[worst], k=1, tokens=tokens)[0]
    out["outliers/act/top_channel"] = top["channel"]
    out["outliers/act/top_channel_layer"] = worst
    out["outliers/act/top_channel_initial_share"] = top["share_initial"]
    out["outliers/act/top_channel_delimiter_share"] = top["share_delimiter"]

    linear_stats = {m: M.weight_stats(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    down_stats = []
    for layer, block in enumerate(model.transformer.h):
        stats = linear_stats[block.mlp.c_proj]
        down_stats.append(stats)
        out[f"outliers/weight/down_proj_col_ratio/layer_{layer}"] = stats["col_ratio"]
        align = M.channel_alignment(result.down_input[layer], block.mlp.c_proj.weight)
        out[f"outliers/weight/down_proj_aligned/layer_{layer}"] = float(align["aligned"])
    out["outliers/weight/down_proj_col_ratio/max"] = max(s["col_ratio"] for s in down_stats)
    out["outliers/weight/down_proj_kurtosis/max"] = max(s["kurtosis"] for s in down_stats)
    out["outliers/weight/down_proj_aligned/frac"] = sum(
        out[f"outliers/weight/down_proj_aligned/layer_{l}"] for l in range(len(down_stats))) / len(down_stats)
    for name in ("col_ratio", "row_ratio", "kurtosis"):
        out[f"outliers/weight/{name}/max"] = max(s[name] for s in linear_stats.values())

    out.update(attention_metrics(result.attention, sink_eps))
    return out


def attention_metrics(layers: list[Mapping[str, torch.Tensor]], sink_eps: float = 0.3) -> dict[str, float]:
    out: dict[str, float] = {}
    shares, null, outlier_keys = [], [], 0
    for layer, extras in enumerate(layers):
        p = extras["probs"]
        share = M.first_token_share(p)
        shares.append(share)
        out[f"outliers/attn/first_token_share/layer_{layer}"] = share.mean().item()
        # differential attention's A1 - lam A2 has negative entries; entropy is taken over the positive part
        out[f"outliers/attn/entropy/layer_{layer}"] = M.attention_entropy(p.clamp(min=0)).mean().item()
        out[f"outliers/attn/max_logit/layer_{layer}"] = extras["max_logit"].max().item()
        layer_null = M.null_mass(p).mean().item()
        null.append(layer_null)
        out[f"outliers/attn/null_mass/layer_{layer}"] = layer_null
        outlier_keys += len(M.attention_outlier_keys(p))
        for name in ("scale", "gate"):
            if name in extras:
                for stat, value in M.value_stats(extras[name]).items():
                    out[f"outliers/attn/{name}/{stat}/layer_{layer}"] = value
    all_shares = torch.cat([s.flatten() for s in shares])
    out["outliers/attn/first_token_share/max"] = all_shares.max().item()
    out["outliers/attn/sink_rate"] = M.sink_rate(all_shares, eps=sink_eps)
    out["outliers/attn/outlier_keys"] = outlier_keys
    out["outliers/attn/null_mass/mean"] = sum(null) / len(null)
    out["outliers/attn/max_logit/max"] = max(v for k, v in out.items() if "/max_logit/layer_" in k)
    return out


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
        emergence: Mapping[str, float] | None = None,
        plot_every_n_steps: int | None = None,
        plots: bool = True,
    ):
        if every_n_steps <= 0 or probe_sequences <= 0:
            raise ConfigError("callbacks.outlier_monitor: every_n_steps and probe_sequences must be positive")
        self.every_n_steps, self.probe_sequences = every_n_steps, probe_sequences
        self.thresholds = dict(massive_abs=massive_abs, massive_ratio=massive_ratio, token_ratio=token_ratio,
                               sink_eps=sink_eps)
        self.emergence = dict(DEFAULT_EMERGENCE if emergence is None else emergence)
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
        result = probe(pl_module.model, tokens)
        metrics = outlier_metrics(result, pl_module.model, tokens.cpu(), **self.thresholds)
        log_metrics(trainer, metrics)
        self.history.append({"step": step, **{k: float(metrics[k]) for k in HISTORY_KEYS}})
        self.last = (result, tokens.cpu(), metrics)
        for key, threshold in self.emergence.items():
            if key not in self.emerged and metrics.get(key, -math.inf) >= threshold:
                self.emerged[key] = step
                update_summary(trainer, {f"emergence/{key}": step})

    def _plot(self, trainer) -> None:
        from outliers import plots

        result, tokens, metrics = self.last
        step, layer = trainer.global_step, int(metrics["outliers/act/top_channel_layer"])
        per_layer = [{k: metrics[f"outliers/act/{k}/layer_{l}"] for k in ("top1", "top2", "top3", "median")}
                     for l in range(len(result.residual))]
        labels = [trainer.datamodule.decode_token(int(t)) for t in tokens[0]]
        heads = sorted(
            ((layer_i, h, float(share)) for layer_i, extras in enumerate(result.attention)
             for h, share in enumerate(M.first_token_share(extras["probs"]))), key=lambda x: -x[2])[:4]
        maps = [(f"layer {l} head {h} (first-token share {share:.2f})", result.attention[l]["probs"][0, h])
                for l, h, share in heads]
        figures = {
            "layer_profile": plots.layer_profile(per_layer, f"Residual |h| per layer, step {step}"),
            "channel_heatmap": plots.channel_token_heatmap(
                result.residual[layer][0], f"|h| of layer {layer} (largest top1/median), step {step}", labels),
            "attention_maps": plots.attention_maps(maps, f"Heads with the highest first-token share, step {step}"),
            "outliers_over_steps": plots.history(self.history, list(HISTORY_KEYS), "Outlier metrics over training"),
        }
        plots.save_figures(figures, Path(trainer.default_root_dir) / "plots", trainer.loggers, step)

    # -- resume -------------------------------------------------------------------------

    def state_dict(self):
        return {"history": self.history, "emerged": self.emerged}

    def load_state_dict(self, state_dict):
        self.history, self.emerged = list(state_dict["history"]), dict(state_dict["emerged"])


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
