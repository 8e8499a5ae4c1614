"""The thresholds of the outlier criteria, declared once. The OutlierMonitor, analyze.py, the
interventions and every measure read this one dataclass; the configs get it as the
``thresholds`` group (a Hydra structured config made from it), so ``thresholds.sink_eps=0.4``
sets it for a run or an analysis, a misspelt name is an error, and a value of the wrong
type is refused before anything runs. Their sources: docs/metrics.md."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from outlier_lab.errors import ConfigError, check_fields


@dataclass
class Thresholds:
    massive_abs: float = 100.0     # Sun et al.: a massive activation has |h| > massive_abs ...
    massive_ratio: float = 1000.0  # ... and |h| >= massive_ratio x its sequence's median |h|
    token_ratio: float = 1000.0    # a token outlier: max_c |h_tc| > token_ratio x its sequence's mean |h| (seed code)
    sink_eps: float = 0.3          # Gu et al.: a (sequence, layer, head) is a sink when alpha > sink_eps, where
    sink_tokens: int | None = 64   # alpha = the mean first-token weight of its first sink_tokens queries (None: all)

    def __post_init__(self):
        bad = [f"{name}={value}" for name, value in asdict(self).items() if value is not None and not value > 0]
        if bad:
            raise ConfigError(f"thresholds must be positive: {', '.join(bad)}")

    @classmethod
    def of(cls, given: Thresholds | Mapping | None) -> Thresholds:
        """``given`` as Thresholds: itself, the defaults for None, or a mapping of some fields
        (a config node); an unknown name is a ConfigError that lists the valid ones."""
        if isinstance(given, Thresholds):
            return given
        given = dict(given or {})
        check_fields(given, cls, "thresholds")
        return cls(**given)


def register_config() -> None:
    """Make ``Thresholds`` the config group ``thresholds`` (option ``default``) that
    configs/train.yaml and configs/analyze.yaml compose; the entry points call it before
    Hydra reads the configs."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="thresholds", name="default", node=Thresholds)
