"""Errors for bad user input, caught by train.py and printed without a stack trace."""


class ConfigError(ValueError):
    """A configuration value is invalid: the message names it and the valid choices."""
