"""A KV cache whose storage grows by doubling, so appending a token copies only that token.

transformers' ``DynamicLayer`` concatenates on every update, copying the whole
cache each step: with many rows (problems x conditions) that copy dominated the
engine's CPU time. Here keys/values are views into a larger buffer; everything
else (``get_seq_length``, masks, ``crop``) works on those views unchanged.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

__all__ = [
    "GrowingLayer",
    "branch_cache",
    "cache_kwargs",
    "compact_cached_rows",
    "copy_cached_rows",
    "new_cache",
    "set_live_rows",
]

_MIN_CAPACITY = 64


class GrowingLayer(DynamicLayer):
    """One layer's keys/values as views of a buffer with spare capacity.

    The views may cover a window of the buffer's rows (:meth:`set_rows`): a latent loop
    that lets rows join one step at a time computes only the live rows, in place.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Start empty; the buffer is allocated on the first append."""
        super().lazy_initialization(key_states, value_states)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._rows = slice(None)

    @classmethod
    def gathered(cls, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor) -> GrowingLayer:
        """A layer holding ``rows`` of ``keys``/``values``, gathered straight into its buffer."""
        layer = cls()
        layer.lazy_initialization(keys, values)
        length = keys.shape[-2]
        shape = (len(rows), *keys.shape[1:-2], max(length, _MIN_CAPACITY), keys.shape[-1])
        layer._key_buffer, layer._value_buffer = keys.new_empty(shape), values.new_empty(shape)
        layer.keys = torch.index_select(keys, 0, rows, out=layer._key_buffer[..., :length, :])
        layer.values = torch.index_select(values, 0, rows, out=layer._value_buffer[..., :length, :])
        return layer

    def set_rows(self, rows: slice) -> None:
        """Make the cache's views (and the next appends) cover these buffer rows only."""
        assert self._key_buffer is not None and self._value_buffer is not None
        length = self.get_seq_length()
        self._rows = rows
        self.keys = self._key_buffer[rows, ..., :length, :]
        self.values = self._value_buffer[rows, ..., :length, :]

    def copy_rows(self, dst: torch.Tensor, src: torch.Tensor, columns: slice) -> None:
        """Buffer rows ``dst`` take rows ``src``'s keys/values in ``columns`` (in place)."""
        assert self._key_buffer is not None and self._value_buffer is not None
        for buffer in (self._key_buffer, self._value_buffer):
            part = buffer[..., columns, :]
            part.index_copy_(0, dst, part.index_select(0, src))

    def compact(self, keep: torch.Tensor) -> None:
        """Keep only window rows ``keep`` (ascending), moved to the window's start (in place).

        Cheaper than gathering into a new buffer: the moved rows reuse the pages already
        written, and only one tensor's rows are in flight at a time.
        """
        assert self._key_buffer is not None and self._value_buffer is not None
        start = self._rows.start or 0
        length = self.get_seq_length()
        moved = slice(start, start + len(keep))
        source = keep + start
        for buffer in (self._key_buffer, self._value_buffer):
            part = buffer[..., :length, :]
            part[moved] = part.index_select(0, source)
        self.set_rows(moved)

    def _grow(self, needed: int, like: torch.Tensor) -> None:
        """A larger buffer (all rows, not only the window's) holding what was written."""
        old_keys, old_values = self._key_buffer, self._value_buffer
        length = self.get_seq_length()
        capacity = max(needed, 2 * (0 if old_keys is None else old_keys.shape[-2]))
        capacity = max(capacity, _MIN_CAPACITY)
        rows = like.shape[0] if old_keys is None else old_keys.shape[0]
        shape = (rows, *like.shape[1:-2], capacity, like.shape[-1])
        keys, values = like.new_empty(shape), like.new_empty(shape)
        if old_keys is not None and old_values is not None and length:
            keys[..., :length, :] = old_keys[..., :length, :]
            values[..., :length, :] = old_values[..., :length, :]
        self._key_buffer, self._value_buffer = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new states in place and return views of the whole cache (window)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        if self._key_buffer is None or end > self._key_buffer.shape[-2]:
            self._grow(end, key_states)
        assert self._key_buffer is not None and self._value_buffer is not None
        keys, values = self._key_buffer[self._rows], self._value_buffer[self._rows]
        if keys.shape[0] != key_states.shape[0]:
            raise RuntimeError(
                f"KV cache holds {keys.shape[0]} rows, the forward {key_states.shape[0]}"
            )
        keys[..., start:end, :] = key_states
        values[..., start:end, :] = value_states
        self.keys = keys[..., :end, :]
        self.values = values[..., :end, :]
        return self.keys, self.values


def set_live_rows(cache: Cache, rows: slice) -> None:
    """Every layer of a growing ``cache`` computes and shows only these buffer rows."""
    for layer in cache.layers:
        assert isinstance(layer, GrowingLayer), "row windows need the growing cache"
        layer.set_rows(rows)


def compact_cached_rows(cache: Cache, keep: torch.Tensor) -> bool:
    """Keep only rows ``keep`` (ascending) of every layer, in place; False if it cannot.

    Only a growing cache compacts in place (the caller then copies with :func:`branch_cache`).
    """
    if not all(
        isinstance(layer, GrowingLayer) and layer._key_buffer is not None for layer in cache.layers
    ):
        return False
    for layer in cache.layers:
        assert isinstance(layer, GrowingLayer)
        layer.compact(keep)
    return True


def copy_cached_rows(cache: Cache, dst: torch.Tensor, src: torch.Tensor, columns: slice) -> None:
    """Every layer's buffer rows ``dst`` take rows ``src``'s keys/values in ``columns``."""
    for layer in cache.layers:
        assert isinstance(layer, GrowingLayer), "row copies need the growing cache"
        layer.copy_rows(dst, src, columns)


def new_cache() -> Cache:
    """An empty cache, created lazily per decoder layer.

    In-place appends would invalidate tensors autograd saved for backward, so with
    gradients enabled (training) this is transformers' concatenating cache.
    """
    if torch.is_grad_enabled():
        return DynamicCache()
    return Cache(layer_class_to_replicate=GrowingLayer)


def branch_cache(cache: Cache, rows: torch.Tensor) -> Cache:
    """A new cache holding copies of ``rows`` (repeats allowed) of every layer: branching.

    Without gradients each layer's rows are gathered straight into a growing buffer (one
    copy per tensor); with them, into transformers' concatenating cache.
    """
    out = new_cache()
    for idx, layer in enumerate(cache.layers):
        keys, values = layer.keys, layer.values  # type: ignore[union-attr]
        if keys is None or values is None:
            raise ValueError("branching needs a filled cache")
        if out.layer_class_to_replicate is GrowingLayer:
            out.layers.append(GrowingLayer.gathered(keys, values, rows))
        else:
            out.update(keys.index_select(0, rows), values.index_select(0, rows), idx)
    return out


@functools.cache
def _cache_keyword(forward: Any) -> str:
    """The keyword ``forward`` takes its KV cache by: ``cache`` (transformers >= 5.24) or not."""
    parameters = inspect.signature(forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(module: Any, cache: Cache | None) -> dict[str, Any]:
    """``{keyword: cache}`` for ``module.forward``, the keyword feature-detected once per class.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns and
    goes away in 5.40); older 5.x releases know only ``past_key_values``.
    """
    return {_cache_keyword(type(module).forward): cache}
