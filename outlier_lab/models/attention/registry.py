"""Name -> attention class. Variants register themselves with ``@register("name")``."""

from __future__ import annotations

from outlier_lab.errors import ConfigError

_REGISTRY: dict[str, type] = {}


def register(name: str):
    def decorator(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"attention variant {name!r} is registered twice")
        _REGISTRY[name] = cls
        cls.variant_name = name
        return cls

    return decorator


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def get_attention_class(name: str) -> type:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown attention variant {name!r}; registered variants: {', '.join(registered_names())}"
        ) from None
