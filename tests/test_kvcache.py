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


def test_repeated_compaction_and_growth_keep_the_right_rows() -> None:
    cache, keys, _ = _filled(rows=8, length=60)  # capacity 64: the appends below grow it
    set_live_rows(cache, slice(1, 8))
    assert compact_cached_rows(cache, torch.tensor([0, 3, 4, 6]))  # buffer rows 1, 4, 5, 7
    assert compact_cached_rows(cache, torch.tensor([1, 3]))  # of those: buffer rows 4, 7
    extra = torch.randn((2, 2, 10, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        k, _ = cache.update(extra, extra, 0)  # 70 > 64 columns: a new, larger buffer
    assert k.shape == (2, 2, 70, 3)
    assert torch.equal(k[:, :, :60], keys[[4, 7]]) and torch.equal(k[:, :, 60:], extra)


def test_keeping_rows_of_a_loop_state_keeps_their_mask_positions_and_ids() -> None:
    from codi_fixtures.engine import LoopState

    cache, keys, _ = _filled(rows=5)
    mask = torch.arange(25).reshape(5, 5)
    state = LoopState(cache, mask, torch.arange(5) + 10, row_ids=torch.tensor([9, 8, 7, 6, 5]))
    kept = state.keep(torch.tensor([1, 4]))
    assert kept is state  # in place: the state is consumed
    assert torch.equal(kept.mask, mask[[1, 4]])
    assert torch.equal(kept.next_pos, torch.tensor([11, 14]))
    assert torch.equal(kept.rows(), torch.tensor([8, 5]))
    assert torch.equal(kept.cache.layers[0].keys, keys[[1, 4]])
