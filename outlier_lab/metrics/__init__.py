"""Outlier metrics in three parts: ``functions`` (pure tensor statistics), ``measures``
(what each probe computes from them, with the declarations of its headline values) and
``registry`` (the declarations every consumer reads). Importing the package registers the
probe measures."""

from outlier_lab.metrics import measures  # noqa: F401  (registers the @measure functions)
from outlier_lab.metrics.measures import Probe
from outlier_lab.metrics.registry import Metric, curve_keys, declare, declared, emergence_defaults, expand, run_measures

__all__ = ["Metric", "Probe", "curve_keys", "declare", "declared", "emergence_defaults", "expand", "run_measures"]
