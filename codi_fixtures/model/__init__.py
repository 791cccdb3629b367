"""Layer 1, the model: architecture table, checkpoint I/O, loading, hooks, KV cache.

Nothing here knows about problems, interventions or statistics. The loader's public names are
re-exported: ``from codi_fixtures.model import load_codi``.
"""

from codi_fixtures.model.codi import N_SPECIAL, CodiModel, build_projection, load_codi, wrap_lora

__all__ = ["N_SPECIAL", "CodiModel", "build_projection", "load_codi", "wrap_lora"]
