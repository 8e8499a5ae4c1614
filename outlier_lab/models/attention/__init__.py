"""Attention variants. Importing this package imports every module in it, so a
new variant is a new file here (plus its YAML in configs/attention/) and nothing else."""

import importlib
import pkgutil
import typing
from dataclasses import field, make_dataclass

from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import get_attention_class, register, registered_names

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in {"base", "registry"}:
        importlib.import_module(f"{__name__}.{_module.name}")


def build_attention(name: str, **kwargs) -> CausalSelfAttention:
    """Instantiate the variant registered as ``name`` (ConfigError lists the valid names)."""
    return get_attention_class(name)(**kwargs)


def register_configs() -> None:
    """Each variant's options (``CausalSelfAttention.options``: its ``__init__`` defaults) as the
    Hydra config ``attention_options/<name>``, typed by its annotations, which
    configs/attention/<name>.yaml extends: the defaults are written once, in the class, and an
    unknown option or a value of the wrong type is refused when the config is composed. The
    entry points call it before Hydra reads the configs."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import MISSING

    for name in registered_names():
        cls = get_attention_class(name)
        hints = typing.get_type_hints(cls.__init__)
        fields = [("name", str, field(default=MISSING)), ("backend", str, field(default=MISSING))]  # the yaml's
        fields += [(key, hints.get(key, typing.Any), field(default=value)) for key, value in cls.options().items()]
        ConfigStore.instance().store(group="attention_options", name=name,
                                     node=make_dataclass(f"{cls.__name__}Options", fields))


__all__ = ["CausalSelfAttention", "build_attention", "get_attention_class", "register", "register_configs", "registered_names"]
