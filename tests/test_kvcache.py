"""The growing KV cache: branching copies and in-place compaction keep exactly the rows asked."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from codi_fixtures.model.kvcache import (
    GrowingLayer,
    compact_cached_rows,
    new_cache,
    set_live_rows,
)


def _filled(rows: int = 6, length: int = 5) -> tuple[object, torch.Tensor, torch.Tensor]:
    """A one-layer growing cache holding random keys/values (rows, 2 heads, length, 3)."""
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn((rows, 2, length, 3), generator=generator)
    values = torch.randn((rows, 2, length, 3), generator=generator)
    with torch.no_grad():
        cache = new_cache()
        cache.update(keys, values, 0)
    return cache, keys, values


def test_compaction_keeps_the_window_rows_asked_for_in_place() -> None:
    cache, keys, values = _filled()
    set_live_rows(cache, slice(2, 6))  # a window, as after rows joined a latent loop late
    layer = cache.layers[0]
    assert isinstance(layer, GrowingLayer)
    buffer = layer._key_buffer
    keep = torch.tensor([0, 2, 3])  # window rows, i.e. buffer rows 2, 4, 5
    assert compact_cached_rows(cache, keep)
    assert layer._key_buffer is buffer  # no new buffer: rows moved inside the old one
    assert torch.equal(layer.keys, keys[[2, 4, 5]])
    assert torch.equal(layer.values, values[[2, 4, 5]])
    new = torch.ones((3, 2, 1, 3))
    with torch.no_grad():
        k, v = cache.update(new, 2 * new, 0)  # appends go to the compacted rows
    assert k.shape == (3, 2, 6, 3)
    assert torch.equal(k[:, :, :5], keys[[2, 4, 5]]) and torch.equal(k[:, :, 5:], new)
    assert torch.equal(v[:, :, 5:], 2 * new)


def test_a_concatenating_cache_is_not_compacted_in_place() -> None:
    cache = DynamicCache()
    cache.update(torch.zeros((2, 1, 1, 1)), torch.zeros((2, 1, 1, 1)), 0)
    assert not compact_cached_rows(cache, torch.tensor([1]))
