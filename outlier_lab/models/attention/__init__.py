"""Attention variants. Importing this package imports every module in it, so a
new variant is a new file here (plus its YAML in configs/attention/) and nothing else."""

import importlib
import pkgutil

from outlier_lab.models.attention.base import CausalSelfAttention
from outlier_lab.models.attention.registry import get_attention_class, register, registered_names

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in {"base", "registry"}:
        importlib.import_module(f"{__name__}.{_module.name}")


def build_attention(name: str, **kwargs) -> CausalSelfAttention:
    """Instantiate the variant registered as ``name`` (ConfigError lists the valid names)."""
    return get_attention_class(name)(**kwargs)


__all__ = ["CausalSelfAttention", "build_attention", "get_attention_class", "register", "registered_names"]
