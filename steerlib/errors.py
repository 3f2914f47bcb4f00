"""Exceptions raised by steerlib.

Every error is meant to be read by a person: one sentence that names the culprit (a parameter,
a file and line, a model class) and says how to fix it. They subclass :class:`ValueError` so
that code written against plain Python conventions still catches them.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "ModelError", "SteerlibError"]


class SteerlibError(ValueError):
    """Base class of every error steerlib raises on purpose."""


class ConfigError(SteerlibError):
    """A parameter has a wrong value, type or range."""


class DataError(SteerlibError):
    """A data file or table is missing, empty or malformed."""


class ModelError(SteerlibError):
    """A model, tokenizer, vector or scorer cannot be loaded or does not fit."""
