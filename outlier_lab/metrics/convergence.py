"""How fast a run's validation loss falls, as pure functions of its curve, and the
declarations of the values the ConvergenceMonitor (outlier_lab/monitor/) writes from them."""

from __future__ import annotations

from collections.abc import Sequence

from outlier_lab.metrics.registry import Metric, declare

declare(
    Metric("convergence/final_val_loss", "final validation loss", column="final val loss"),
    Metric("convergence/final_val_ppl", "final validation perplexity", column="final ppl"),
    Metric("convergence/val_loss_auc", "area under the val-loss curve over the span", column="val-loss AUC"),
)


def val_loss_auc(curve: Sequence[tuple[int, float]]) -> float:
    """The area under the validation-loss curve (trapezoid over steps) divided by its span:
    the mean loss over training, lower = faster. One point: its loss."""
    if len(curve) == 1:
        return curve[0][1]
    area = sum((s1 - s0) * (l0 + l1) / 2 for (s0, l0), (s1, l1) in zip(curve, curve[1:]))
    return area / (curve[-1][0] - curve[0][0])
