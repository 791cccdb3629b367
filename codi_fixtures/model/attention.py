"""Eager attention for grouped-query models that never copies keys/values per query head.

transformers' eager attention expands a grouped-query layer's keys and values to one copy
per query head (``repeat_kv``) on every forward. With many rows and a long cache that copy
is the largest allocation of a step: on SmolLM2 (9 query / 3 KV heads, 30 layers) it is
twice the whole KV cache per step, served by fresh pages each time. Here the query heads
that share a KV head are folded into that head's query rows instead, so one matmul per KV
head computes the same scores, probabilities and outputs, and the probabilities come back
in the eager layout ``(batch, heads, queries, keys)`` for the attention hooks.

Same arithmetic as eager: each score is the same dot product, scaled, masked and softmaxed
in float32 the same way; only the matmul shapes differ, which may round differently at the
last bit. Models without grouped heads (GPT-2, the bundled organism) keep transformers' own
eager attention untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["GROUPED_EAGER", "grouped_eager_attention", "use_grouped_eager"]

GROUPED_EAGER = "codi_grouped_eager"
"""The name this attention is registered under (``config._attn_implementation``)."""


def grouped_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with query heads grouped onto their KV head; returns (output, probs).

    ``query`` (B, H, n, hd), ``key``/``value`` (B, H_kv, S, hd), H = H_kv x groups, query
    head ``h`` reading KV head ``h // groups`` (transformers' ``repeat_kv`` order).
    """
    batch, heads, n, head_dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[-2]
    groups = heads // kv_heads
    folded = query.reshape(batch, kv_heads, groups * n, head_dim)
    scores = torch.matmul(folded, key.transpose(2, 3)).view(batch, heads, n, keys) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs.view(batch, kv_heads, groups * n, keys), value)
    out = out.view(batch, heads, n, head_dim).transpose(1, 2).contiguous()
    return out, probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(GROUPED_EAGER, grouped_eager_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_EAGER, eager_mask)


def use_grouped_eager(model: nn.Module) -> bool:
    """Switch an eager grouped-query causal LM (peft-wrapped or not) to this attention.

    Returns whether it switched: only eager models with fewer KV heads than query heads
    do; sdpa / flash models (training) and ungrouped ones are left as they are.
    """
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if config is None or not heads or kv_heads == heads:
        return False
    if getattr(config, "_attn_implementation", None) != "eager":
        return False
    _register()
    model.set_attn_implementation(GROUPED_EAGER)  # type: ignore[operator]
    return True
