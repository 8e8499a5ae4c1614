"""The ConvergenceMonitor: how fast a run's validation loss falls (steps, tokens and seconds
to each target, the area under the curve) and where it ends, in summary.json and the loggers;
its state is saved in checkpoints so that a resumed run continues its record."""

from __future__ import annotations

import math
import time

import lightning as L

from outlier_lab.metrics.convergence import val_loss_auc
from outlier_lab.summary import log_metrics, update_summary


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
        values = {"convergence/val_loss_auc": val_loss_auc(self.curve), "convergence/final_val_loss": self.curve[-1][1],
                  "convergence/final_val_ppl": math.exp(self.curve[-1][1]),
                  "convergence/train_seconds": round(self._elapsed(), 2)}
        values.update({f"convergence/step_to_{t:g}": self.reached.get(f"convergence/step_to_{t:g}")
                       for t in self.targets})
        log_metrics(trainer, {k: v for k, v in values.items() if v is not None})
        update_summary(trainer, values)

    def state_dict(self):
        return {"curve": self.curve, "reached": self.reached, "seconds": self._elapsed()}

    def load_state_dict(self, state_dict):
        self.curve = [tuple(x) for x in state_dict["curve"]]
        self.reached, self.seconds = dict(state_dict["reached"]), float(state_dict["seconds"])
