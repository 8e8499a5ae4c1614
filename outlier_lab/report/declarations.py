"""What the report shows, taken from the metric declarations (``outlier_lab.metrics.registry``)
rather than from lists of its own: the table's columns and the panels of
``outliers_vs_step.png``. A new declared metric shows up in the report without an edit here.

The registry loads the declaring packages itself (outlier_lab.metrics and
outlier_lab.compression; no training code), so the report reads it only through the
functions below.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from outlier_lab.metrics.registry import Metric, declared, expand, get

TOKENS_TO = re.compile(r"^convergence/tokens_to_(.+)$")
PPL_RATIO = re.compile(r"^compress/(.+)/ppl_ratio$")
LAYER_KEY = re.compile(r"^outliers/act/(top1|median)/layer_(\d+)$")
# Guo et al.'s residual-state peak and value-state drain of the first token, per layer
EXTREME_KEY = re.compile(r"^outliers/(act/residual_peak|attn/value_drain)/layer_(\d+)$")
LOSS_CURVES = ("train/loss", "val/loss")  # logged by Lightning, not declared metrics
TOKENS_CURVE = "train/tokens"  # tokens trained on after each step: where a run that missed a target stopped


def declared_key(key: str) -> str:
    """key itself, once checked to be declared: a key the report names that nobody declares
    would be an empty column or panel, so it is an error instead."""
    try:
        return get(key).key
    except KeyError:
        raise KeyError(f"the report names the metric {key!r}, which no module declares "
                       f"(declared: {', '.join(m.key for m in declared())})") from None


def column_metrics(found: Iterable[str] = ()) -> list[Metric]:
    """Metrics with a report-table column header, in section then declaration order; a
    per-domain template gives a column for each domain among the found summary keys."""
    return [m for m in expand(declared(), found) if m.column is not None]


def panel_metrics(found: Iterable[str] = ()) -> list[Metric]:
    """Metrics drawn over steps in outliers_vs_step.png, one panel each; templates expand
    to the domains among the found curve keys."""
    return [m for m in expand(declared(), found) if m.panel]


def is_curve(key: str) -> bool:
    """Whether a metrics.csv column is read: the losses, the tokens trained on, the panels
    (any domain), the per-layer profiles."""
    return (key in LOSS_CURVES or key == TOKENS_CURVE or LAYER_KEY.match(key) is not None or EXTREME_KEY.match(key) is not None
            or any(m.panel and m.matches(key) for m in declared()))


def ratio_columns(found: Iterable[str], shown: Iterable[str]) -> list[tuple[str, str]]:
    """(key, header) of the ``compress/<protocol>/ppl_ratio`` keys found in the summaries
    that have no column yet (not in shown): the declared ones first, then those nobody
    declares (their values are data all the same), each part sorted by key."""
    declared_keys = {m.key for m in declared("compress")}
    extra = {key for key in found if PPL_RATIO.match(key)} - set(shown)
    keys = sorted(extra & declared_keys) + sorted(extra - declared_keys)
    return [(key, f"{PPL_RATIO.match(key).group(1)} ppl ratio") for key in keys]
