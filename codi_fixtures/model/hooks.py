"""Forward hooks on decoder blocks, always removed on exit (even when the body raises)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from codi_fixtures.model.architecture import attention_modules, decoder_layers

__all__ = ["BlockFn", "attention_weights_hook", "block_output_hook", "count_forward_hooks"]

BlockFn = Callable[[torch.Tensor], torch.Tensor | None]
"""Receives block output ``(batch, seq, d)``; returns a replacement or None to keep it."""


@contextmanager
def block_output_hook(model: nn.Module, layer: int, fn: BlockFn) -> Iterator[None]:
    """Run ``fn`` on the output of decoder block ``layer`` while the context is open.

    transformers 5 decoder layers return a bare tensor; older ones a tuple whose
    first element is the hidden state. Both are handled.
    """
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} out of range: the model has {len(layers)} blocks")

    def hook(_module: nn.Module, _inputs: object, output: object) -> object:
        hidden = output[0] if isinstance(output, tuple) else output
        assert isinstance(hidden, torch.Tensor)
        new = fn(hidden)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def attention_weights_hook(
    model: nn.Module, layer: int, fn: Callable[[torch.Tensor], None]
) -> Iterator[None]:
    """Run ``fn`` on block ``layer``'s attention probabilities ``(batch, heads, q, k)``.

    Eager attention returns them from every forward (no ``output_attentions``, so only what
    ``fn`` keeps stays in memory); a kernel that does not (sdpa, flash) raises.
    """
    module = attention_modules(model)[layer]

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if not isinstance(weights, torch.Tensor):
            raise RuntimeError(
                f"block {layer}'s attention returned no probabilities; load the model with "
                "attn_implementation='eager'"
            )
        fn(weights)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def count_forward_hooks(model: nn.Module) -> int:
    """Number of forward hooks registered anywhere in ``model``.

    transformers 5 installs output-capturing hooks of its own on the first forward
    that asks for attentions or hidden states and keeps them, so tests compare the
    count before and after a run rather than expecting zero.
    """
    return sum(len(m._forward_hooks) for m in model.modules())
