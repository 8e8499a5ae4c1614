"""Outlier metrics: pure tensor statistics (``activations``, ``weights``, ``attention``,
``tokens``), what each probe computes from them (``measures``, with the declarations of its
headline values), the convergence values (``convergence``), what a probe captured
(``probe_result``), the thresholds of the criteria (``thresholds``) and the declarations every
consumer reads (``registry``, which loads the declaring modules itself)."""

from outlier_lab.metrics.measures import Probe
from outlier_lab.metrics.registry import Metric, curve_keys, declare, declared, emergence_defaults, expand, run_measures

__all__ = ["Metric", "Probe", "curve_keys", "declare", "declared", "emergence_defaults", "expand", "run_measures"]
