"""The declaration of every value that goes somewhere beyond the loggers: a curve over
training, summary.json, a report column or panel, an emergence threshold.

A metric is one function plus one declaration. The function computes values from a probe
(``@measure``) or at the end of a run (convergence, compression); its ``Metric``
declarations, written beside it, say where each headline value goes. The monitor, the
summary, the report and ``analyze.py`` read the declarations here and nowhere else, so a
new metric never means editing a list in another file.

Sections follow the key's first part: ``convergence/``, ``outliers/``, ``compress/``;
the report orders its columns by section, then by declaration order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

SECTIONS = ("convergence", "outliers", "compress")


@dataclass(frozen=True)
class Metric:
    key: str                       # the logged name, e.g. "outliers/attn/sink_rate"
    title: str                     # what it is, in words: figure panels and docs
    column: str | None = None      # header of its report-table column (None: not a column)
    curve: bool = False            # kept at every probe: monitor history, its plot, summary.json
    panel: bool = False            # drawn over steps in the report's outliers_vs_step.png
    emergence: float | None = None  # default threshold of emergence/<key> (None: not watched)

    @property
    def section(self) -> str:
        return self.key.split("/", 1)[0]

    def __post_init__(self):
        if self.section not in SECTIONS:
            raise ValueError(f"metric {self.key!r}: the key must start with one of {', '.join(SECTIONS)}")
        if (self.panel or self.emergence is not None) and not self.curve and self.section == "outliers":
            raise ValueError(f"metric {self.key!r}: a panel or an emergence threshold needs curve=True")


_METRICS: dict[str, Metric] = {}
# (function, the keys it must produce), in registration order
_MEASURES: list[tuple[Callable[..., Mapping[str, float]], tuple[str, ...]]] = []


def declare(*metrics: Metric) -> None:
    """Register metrics; declaring one key twice with different fields is an error."""
    for metric in metrics:
        old = _METRICS.get(metric.key)
        if old is not None and old != metric:
            raise RuntimeError(f"metric {metric.key!r} is declared twice, differently: {old} and {metric}")
        _METRICS[metric.key] = metric


def measure(*metrics: Metric):
    """Decorator: ``fn(probe) -> {key: value}`` runs at every probe of the OutlierMonitor (and
    in analyze.py); it must produce every declared key, and may log more (per-layer values)."""
    def decorator(fn):
        declare(*metrics)
        _MEASURES.append((fn, tuple(m.key for m in metrics)))
        return fn
    return decorator


def run_measures(probe) -> dict[str, float]:
    """Every registered measure on one probe, merged in registration order."""
    out: dict[str, float] = {}
    for fn, keys in _MEASURES:
        values = fn(probe)
        missing = [key for key in keys if key not in values]
        if missing:
            raise RuntimeError(f"measure {fn.__name__} declares {missing} but did not produce them")
        out.update(values)
    return out


def declared(section: str | None = None) -> list[Metric]:
    """The declared metrics, by section (in SECTIONS order), then in declaration order."""
    metrics = [m for m in _METRICS.values() if section is None or m.section == section]
    return sorted(metrics, key=lambda m: SECTIONS.index(m.section))


def get(key: str) -> Metric:
    try:
        return _METRICS[key]
    except KeyError:
        raise KeyError(f"no metric {key!r} is declared; declared: {', '.join(_METRICS)}") from None


def curve_keys() -> list[str]:
    return [m.key for m in declared() if m.curve]


def emergence_defaults() -> dict[str, float]:
    return {m.key: m.emergence for m in declared() if m.emergence is not None}
