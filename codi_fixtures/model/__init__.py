"""Layer 1, the model: architecture table, checkpoint I/O, loading, hooks, KV cache.

Nothing here knows about problems, interventions or statistics. The loader's public names are
re-exported (``from codi_fixtures.model import load_codi``), lazily: importing
``codi_fixtures.model.architecture`` (layer roles, positions) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codi_fixtures.model.codi import (
        N_SPECIAL,
        CodiModel,
        build_projection,
        load_codi,
        wrap_lora,
    )

__all__ = ["N_SPECIAL", "CodiModel", "build_projection", "load_codi", "wrap_lora"]


def __getattr__(name: str) -> Any:
    """The loader's names, imported from :mod:`codi_fixtures.model.codi` on first use."""
    if name in __all__:
        return getattr(importlib.import_module("codi_fixtures.model.codi"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
