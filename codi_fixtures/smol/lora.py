"""The SmolLM2 CODI module: frozen base + LoRA + ``prj`` + three trainable added token rows.

The embedding is tied to the LM head, so training the three new rows (pad, ``<bot>``,
``<eot>``) through the full (V+3) x d matrix would compute a 28 M-parameter weight gradient
every step. :class:`SplitEmbedding` / :class:`SplitHead` keep the V base rows frozen and the
three new rows in a small shared parameter ``extra`` (tied: one parameter serves both).
They are training-time modules only: :func:`fold_new_rows` writes ``extra`` back into the
ordinary embedding, giving exactly the published layout.
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from codi_fixtures.model import N_SPECIAL, CodiModel, build_projection, wrap_lora
from codi_fixtures.model.architecture import unwrap_peft
from codi_fixtures.model.checkpoint import CodiSpec

__all__ = [
    "LORA_TARGETS",
    "SplitEmbedding",
    "SplitHead",
    "add_special_rows",
    "build_codi",
    "fold_new_rows",
    "trainable_state",
]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class SplitEmbedding(nn.Embedding):
    """An embedding whose first ``n_base`` rows are frozen and last rows live in ``extra``."""

    def __init__(self, weight: torch.Tensor, n_new: int):
        rows, dim = weight.shape
        super().__init__(rows, dim, _weight=weight.detach(), _freeze=True)
        self.n_base = rows - n_new
        self.extra = nn.Parameter(weight.detach()[self.n_base :].clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Base rows from the frozen matrix, new rows from ``extra`` (gradients only there)."""
        out = F.embedding(ids.clamp(max=self.n_base - 1), self.weight)
        new = ids >= self.n_base
        if bool(new.any()):
            extra = self.extra[(ids - self.n_base).clamp(min=0)]
            out = torch.where(new[..., None], extra, out)
        return out


class SplitHead(nn.Linear):
    """The tied LM head over (frozen base rows, ``extra`` rows); no bias."""

    def __init__(self, embedding: SplitEmbedding):
        rows, dim = embedding.weight.shape
        super().__init__(dim, rows, bias=False, device="meta")
        self.weight = embedding.weight
        self.extra = embedding.extra
        self.n_base = embedding.n_base

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over V + new rows."""
        base = F.linear(hidden, self.weight[: self.n_base])
        return torch.cat([base, F.linear(hidden, self.extra)], dim=-1)


def add_special_rows(backbone: Any, seed: int = 0) -> None:
    """Append pad, ``<bot>``, ``<eot>`` rows: the embedding mean plus small seeded noise."""
    old = backbone.get_input_embeddings().weight.data
    vocab, dim = old.shape
    gen = torch.Generator().manual_seed(random.Random(seed).randrange(2**31))
    noise = torch.randn((N_SPECIAL, dim), generator=gen) * old.std() * 0.1
    rows = old.mean(dim=0, keepdim=True) + noise
    emb = nn.Embedding(vocab + N_SPECIAL, dim)
    emb.weight.data = torch.cat([old, rows.to(old.dtype)], dim=0)
    backbone.set_input_embeddings(emb)
    head = nn.Linear(dim, vocab + N_SPECIAL, bias=False)
    head.weight = emb.weight
    backbone.set_output_embeddings(head)
    backbone.config.vocab_size = vocab + N_SPECIAL


def build_codi(
    backbone: Any, tokenizer: Any, spec: CodiSpec, *, seed: int = 0, trainable: bool = True
) -> CodiModel:
    """A CODI module on a pretrained backbone (base vocabulary): rows added, LoRA wrapped.

    With ``trainable`` the embedding / head become :class:`SplitEmbedding` /
    :class:`SplitHead`, the base is frozen, and only LoRA, ``extra`` and ``prj`` train.
    """
    torch.manual_seed(seed)
    add_special_rows(backbone, seed)
    hidden = int(backbone.config.hidden_size)
    prj = build_projection(hidden, spec.prj_dim)
    if trainable:
        # Start thoughts at the scale of token embeddings (norm ~3 here, not LayerNorm's ~24):
        # an initialisation only; the LayerNorm affine parameters train as usual.
        base_rows = backbone.get_input_embeddings().weight.detach()[:-N_SPECIAL]
        norm: Any = prj.ln
        with torch.no_grad():
            norm.weight.copy_(base_rows.std(dim=0))
            norm.bias.copy_(base_rows.mean(dim=0))
    peft_model = wrap_lora(backbone, spec)
    if trainable:
        inner: Any = unwrap_peft(peft_model)
        split = SplitEmbedding(inner.get_input_embeddings().weight, N_SPECIAL)
        inner.set_input_embeddings(split)
        inner.set_output_embeddings(SplitHead(split))
        for name, param in peft_model.named_parameters():
            param.requires_grad_("lora_" in name or name.endswith(".extra"))
    return CodiModel(peft_model, prj, spec, tokenizer)


def fold_new_rows(model: CodiModel) -> None:
    """Replace the split embedding / head by ordinary tied modules holding the trained rows."""
    inner: Any = unwrap_peft(model.codi)
    emb = inner.get_input_embeddings()
    if not isinstance(emb, SplitEmbedding):
        return
    weight = emb.weight.detach().clone()
    weight[emb.n_base :] = emb.extra.detach()
    plain = nn.Embedding(*weight.shape)
    plain.weight = nn.Parameter(weight, requires_grad=False)
    inner.set_input_embeddings(plain)
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight = plain.weight
    inner.set_output_embeddings(head)


def trainable_state(model: CodiModel) -> dict[str, torch.Tensor]:
    """The parameters that train (LoRA A/B, ``extra`` rows, ``prj``) by state-dict name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
