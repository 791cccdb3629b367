"""All indexing conventions and architecture knowledge, in one place.

Positions follow DESIGN.md (``remove_eos`` layout)::

    0..Q-1     question tokens (BOS included when the tokenizer adds one)
    Q          <bot>
    Q+1+t      thought t, t = 0..n_thoughts-1
    Q+1+n      <eot>   (its logits predict the first answer token)

Layer ``L`` (0-based) is the output of decoder block ``L``.

Importing this module does not import torch (only :func:`decoder_layers` needs it), so the
analyses can use the layer roles and positions without loading a model stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "LayerRoles",
    "attention_modules",
    "decoder_layers",
    "eot_position",
    "hidden_state_index",
    "layer_roles",
    "thought_position",
    "unwrap_peft",
]


def thought_position(thought: int, q_len: int) -> int:
    """Sequence position of thought ``thought`` (0-based) after a ``q_len``-token question."""
    if thought < 0:
        raise ValueError(f"thought index must be >= 0, got {thought}")
    return q_len + 1 + thought


def eot_position(q_len: int, n_thoughts: int) -> int:
    """Sequence position of ``<eot>``: right after the last thought."""
    return q_len + 1 + n_thoughts


def hidden_state_index(layer: int) -> int:
    """Index into Hugging Face ``hidden_states`` holding block ``layer``'s output.

    ``hidden_states[0]`` is the embedding output. Caveat: for the *last* block,
    transformers stores the output after the final norm, so code that needs the
    raw last-block residual reads it with a forward hook (the engine does).
    """
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    return layer + 1


def unwrap_peft(model: nn.Module) -> nn.Module:
    """Strip a peft wrapper, if any, returning the transformers model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a GPT-2 or LLaMA causal LM (peft-wrapped or not)."""
    from torch import nn

    inner = unwrap_peft(model)
    # Known layouts: LLaMA-like (model.layers) and GPT-2 (transformer.h).
    for path in (("model", "layers"), ("transformer", "h")):
        node: object = inner
        for attr in path:
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList):
            return node
    raise NotImplementedError(
        f"unsupported architecture {type(inner).__name__}: codi-interp knows LLaMA-style "
        "(model.layers) and GPT-2 (transformer.h) decoders"
    )


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every decoder block (LLaMA ``self_attn``, GPT-2 ``attn``)."""
    from torch import nn

    out = []
    for layer in decoder_layers(model):
        module = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
        if not isinstance(module, nn.Module):
            raise NotImplementedError(
                f"no self-attention module found in {type(layer).__name__} (knows self_attn, attn)"
            )
        out.append(module)
    return out


@dataclass(frozen=True)
class LayerRoles:
    """The layers that play the early / middle / late roles in RQ2."""

    early: int
    middle: int
    late: int

    def as_dict(self) -> dict[str, int]:
        """Role name -> layer index."""
        return {"early": self.early, "middle": self.middle, "late": self.late}


def layer_roles(n_layers: int, override: tuple[int, int, int] | None = None) -> LayerRoles:
    """Early/middle/late layers by depth: n/4, n/2, 7n/8 (16 layers -> 4, 8, 14)."""
    if n_layers < 4:
        raise ValueError(f"need at least 4 decoder layers for early/middle/late, got {n_layers}")
    layers = override or (n_layers // 4, n_layers // 2, (7 * n_layers) // 8)
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(
                f"layer {layer} out of range: the model has {n_layers} layers (0..{n_layers - 1})"
            )
    return LayerRoles(*layers)
