"""Errors for bad user input, reported by the entry points without a stack trace."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import fields


class ConfigError(ValueError):
    """A configuration value is invalid: the message names it and the valid choices."""


def is_integer(value) -> bool:
    """An int that is not a bool: YAML's true/false are ints to isinstance."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or a float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_fields(given: Mapping, cls: type, what: str, hint: str = "") -> None:
    """A ConfigError naming the keys of ``given`` that are no field of the dataclass ``cls``
    (``what``: the config block, e.g. ``optim``), so a misspelt key is never ignored."""
    valid = [f.name for f in fields(cls)]
    if unknown := sorted(set(given) - set(valid)):
        raise ConfigError(f"unknown {what} keys {unknown}; valid: {', '.join(valid)}{hint}")


def find_config_error(error: BaseException | None) -> ConfigError | None:
    """The ConfigError behind ``error`` (Hydra's instantiate wraps the ones from constructors)."""
    while error is not None:
        if isinstance(error, ConfigError):
            return error
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def exit_on_config_error(console):
    """Print a ConfigError (however wrapped) as one line and exit with status 2."""
    from rich.markup import escape

    try:
        yield
    except Exception as e:
        error = find_config_error(e)
        if error is None:
            raise
        console.print(f"[bold red]Configuration error:[/] {escape(str(error))}")
        sys.exit(2)
