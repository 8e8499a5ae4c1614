"""The declaration of every value that goes somewhere beyond the loggers: a curve over
training, summary.json, a report column or panel, an emergence threshold.

A metric is one function plus one declaration. The function computes values from a probe
(``@measure``) or at the end of a run (convergence, compression); its ``Metric``
declarations, written beside it, say where each headline value goes. The monitor, the
summary, the report and ``analyze.py`` read the declarations here and nowhere else, so a
new metric never means editing a list in another file.

Sections follow the key's first part: ``convergence/``, ``outliers/``, ``compress/``.
Each section is declared in one package (``SECTIONS``), and the registry loads the
declarations itself: every consumer that asks for a section (``declared``, ``run_measures``)
gets all of it, whatever it happened to import, and loading imports no training code (the
report reads the declarations without Lightning). A project module that declares a metric
outside its section's package is an error, so no declaration can stay unseen. The report
orders its columns by section, then by module (in the package's order), then by
declaration order within the module: the same order in every process.

A key holding ``{domain}`` declares one metric per query domain that a data module names
(e.g. ``active`` and ``dormant`` queries of the Bigram-Backcopy task): the domains are not
known when the code is written, so such a declaration is a template, and each consumer
expands it against the keys it actually has (``expand``).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

# each section and the package whose modules declare it (all of them are imported to load it)
SECTIONS = {"convergence": "outlier_lab.metrics", "outliers": "outlier_lab.metrics",
            "compress": "outlier_lab.compression"}
PROJECT = "outlier_lab."  # modules of the project; others (tests, a user's script) declare freely
DOMAIN = "{domain}"  # the placeholder of a per-domain template key


@dataclass(frozen=True)
class Metric:
    key: str                       # the logged name, e.g. "outliers/attn/sink_rate"
    title: str                     # what it is, in words: figure panels and docs
    column: str | None = None      # header of its report-table column (None: not a column)
    curve: bool = False            # kept at every probe: monitor history, its plot, summary.json
    panel: bool = False            # drawn over steps in the report's outliers_vs_step.png
    emergence: float | None = None  # default threshold of emergence/<key> (None: not watched)
    binary_above: float | None = None  # a yes/no outcome per run: yes when its value > this (None: a value)

    @property
    def section(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def per_domain(self) -> bool:
        return DOMAIN in self.key

    def matches(self, key: str) -> bool:
        """Whether key is this metric's key, or one of its instances for a template."""
        return key == self.key or (self.per_domain and self._pattern.match(key) is not None)

    @property
    def _pattern(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.key).replace(re.escape(DOMAIN), "([^/]+)") + "$")

    def instances(self, keys: Iterable[str]) -> list[Metric]:
        """[self] for a plain metric; for a template, one metric per domain found in keys
        (sorted by domain), with the domain's name in its key, title and column header."""
        if not self.per_domain:
            return [self]
        domains = sorted({m.group(1) for key in keys if (m := self._pattern.match(key))})

        def fill(text: str | None, domain: str) -> str | None:
            return None if text is None else text.replace(DOMAIN, domain)

        return [replace(self, key=fill(self.key, d), title=fill(self.title, d), column=fill(self.column, d))
                for d in domains]

    def __post_init__(self):
        if self.section not in SECTIONS:
            raise ValueError(f"metric {self.key!r}: the key must start with one of {', '.join(SECTIONS)}/")
        if (self.panel or self.emergence is not None) and not self.curve and self.section == "outliers":
            raise ValueError(f"metric {self.key!r}: a panel or an emergence threshold needs curve=True")
        if self.per_domain and self.emergence is not None:
            raise ValueError(f"metric {self.key!r}: a per-domain template cannot have an emergence threshold")


_METRICS: dict[str, Metric] = {}
_ORIGIN: dict[str, tuple[str, int]] = {}  # key -> (declaring module, its place in that module)
# (finishing function, window reduction, the keys it must produce), in registration order
_MEASURES: list[tuple[Callable[..., Mapping[str, float]], tuple[str, ...]]] = []
_MODULE_ORDER: list[str] = []  # the declaring packages' modules, in loading order
_LOADED: set[str] = set()


def load(sections: Iterable[str] = SECTIONS) -> None:
    """Import every module of the packages that declare ``sections`` (once per package)."""
    for package_name in dict.fromkeys(SECTIONS[s] for s in sections):
        if package_name in _LOADED:
            continue
        _LOADED.add(package_name)
        package = importlib.import_module(package_name)
        names = [package_name] + sorted(info.name for info in pkgutil.walk_packages(package.__path__, package_name + "."))
        _MODULE_ORDER.extend(name for name in names if name not in _MODULE_ORDER)
        for name in names:
            importlib.import_module(name)


def declare(*metrics: Metric, source: str | None = None) -> None:
    """Register metrics declared in module ``source`` (the caller's, when None); declaring one
    key twice with different fields, or in a project module outside the section's package,
    is an error."""
    source = source or sys._getframe(1).f_globals["__name__"]
    for metric in metrics:
        home = SECTIONS[metric.section]
        if source.startswith(PROJECT) and not (source == home or source.startswith(home + ".")):
            raise RuntimeError(f"metric {metric.key!r} is declared in {source}, outside {home}, where the "
                               f"registry loads the {metric.section} declarations from: move it there")
        old = _METRICS.get(metric.key)
        if old is not None and old != metric:
            raise RuntimeError(f"metric {metric.key!r} is declared twice, differently: {old} and {metric}")
        _METRICS[metric.key] = metric
        _ORIGIN.setdefault(metric.key, (source, len(_ORIGIN)))


def measure(*metrics: Metric, window: Callable):
    """Decorator of a probe measure, in two parts (``partials``): ``window(probe)`` reduces
    one probe pass (a window, or a batch of them) to the measure's partial results, and the
    decorated ``fn(parts, thresholds) -> {key: value}`` finishes its values from the partials
    of all windows merged (their leaves' values, ``partials.values``). It runs at every probe
    of the OutlierMonitor (one pass) and in analyze.py (window by window); it must produce
    every declared key (a template: any number of domains, none when the data names no
    domains), and may log more (per-layer values)."""
    def decorator(fn):
        if any(other.__name__ == fn.__name__ for other, _, _ in _MEASURES):  # its partials are kept by name
            raise RuntimeError(f"a measure named {fn.__name__!r} is registered twice ({fn.__module__})")
        declare(*metrics, source=fn.__module__)
        _MEASURES.append((fn, window, tuple(m.key for m in metrics)))
        return fn
    return decorator


def reduce_probe(probe) -> dict:
    """Every registered measure's partial results of one probe pass, by measure name; the
    partials of several passes merge with ``partials.merge``."""
    load(["outliers"])
    return {fn.__name__: window(probe) for fn, window, _ in _MEASURES}


def finish_measures(parts: dict, thresholds) -> dict[str, float]:
    """Every registered measure's values from ``parts`` (``reduce_probe``'s, or several
    merged; as leaves or as their values), merged in registration order."""
    from outlier_lab.metrics.partials import values  # torch: the report reads the declarations without it

    load(["outliers"])
    parts = values(parts)
    out: dict[str, float] = {}
    for fn, _, keys in _MEASURES:
        result = fn(parts[fn.__name__], thresholds)
        missing = [key for key in keys if DOMAIN not in key and key not in result]
        if missing:
            raise RuntimeError(f"measure {fn.__name__} declares {missing} but did not produce them")
        out.update(result)
    return out


def run_measures(probe) -> dict[str, float]:
    """Every registered measure on one probe pass (a ``measures.Probe``)."""
    return finish_measures(reduce_probe(probe), probe.thresholds)


def declared(section: str | None = None) -> list[Metric]:
    """The declared metrics (all of them, or one section's), by section in SECTIONS order, then
    by declaring module, then in declaration order."""
    load(SECTIONS if section is None else [section])
    sections, modules = list(SECTIONS), {name: i for i, name in enumerate(_MODULE_ORDER)}

    def order(metric: Metric) -> tuple[int, int, int]:
        module, place = _ORIGIN[metric.key]
        return sections.index(metric.section), modules.get(module, len(modules)), place

    return sorted((m for m in _METRICS.values() if section is None or m.section == section), key=order)


def get(key: str) -> Metric:
    load()
    try:
        return _METRICS[key]
    except KeyError:
        raise KeyError(f"no metric {key!r} is declared; declared: {', '.join(_METRICS)}") from None


def expand(metrics: Iterable[Metric], keys: Iterable[str]) -> list[Metric]:
    """The metrics with every template replaced by its instances among keys (in place)."""
    keys = list(keys)
    return [instance for metric in metrics for instance in metric.instances(keys)]


def curve_keys(found: Iterable[str] = ()) -> list[str]:
    """The keys kept at every probe; per-domain templates count for the domains in found."""
    return [m.key for m in expand(declared(), found) if m.curve]


def emergence_defaults() -> dict[str, float]:
    return {m.key: m.emergence for m in declared() if m.emergence is not None}
