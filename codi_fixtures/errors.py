"""Errors that name the problem and the fix; the plugin shows them without a traceback."""

from __future__ import annotations

__all__ = ["CheckpointError", "CodiError", "ConfigError", "DataError"]


class CodiError(Exception):
    """Base class: a user-facing problem with an actionable message."""


class CheckpointError(CodiError):
    """A checkpoint directory, weights file or key layout is unusable."""


class DataError(CodiError):
    """A problem file or record is malformed."""


class ConfigError(CodiError):
    """An option value is invalid (device, dtype, layer, ablation kind, ...)."""
