"""The routing read-out's arrays: attention to each question token, and the tokens' roles (RQ6).

The engine records, in the clean pass, the head-mean attention from the query that produces
each thought to the prompt's columns (:attr:`codi_fixtures.engine.LatentRun.routing`). Under
left padding a question of ``Q`` tokens (BOS, and an eos before ``<bot>`` if the model has
one, included) fills columns ``P-1-Q .. P-2`` of a P-column prompt (``<bot>`` is column
``P-1``); here they become token positions ``0..Q-1``, padded to a width shared by the whole
problem set. Roles come from :mod:`codi_fixtures.study.roles` through the tokenizer's
character offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from codi_fixtures.model.codi import CodiModel
from codi_fixtures.study.problems import Problem
from codi_fixtures.study.roles import tag_question, token_roles

__all__ = ["question_offsets", "question_width", "routing_arrays"]


def _token_offsets(tokenizer: Any, question: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``question`` (as ``build_prompt`` makes them) and their character spans."""
    if not getattr(tokenizer, "is_fast", False):
        raise NotImplementedError(
            f"the routing read-out needs a fast tokenizer (character offsets); "
            f"{type(tokenizer).__name__} is not one"
        )
    encoded = tokenizer(question, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]


def question_offsets(model: CodiModel, question: str) -> list[tuple[int, int] | None]:
    """Character span of each of the question's Q prompt tokens (None: BOS, eos, no text)."""
    ids, spans = _token_offsets(model.tokenizer, question)
    special = set(model.tokenizer.all_special_ids)
    out: list[tuple[int, int] | None] = [
        None if token in special or end <= start else (start, end)
        for token, (start, end) in zip(ids, spans, strict=True)
    ]
    if model.spec.eos_before_bot:
        out.append(None)
    return out


def question_width(model: CodiModel, problems: Sequence[Problem]) -> int:
    """The longest question in prompt tokens (the read-out's padded width)."""
    return max((len(question_offsets(model, p.question)) for p in problems), default=0)


def _texts(
    question: str, offsets: Sequence[tuple[int, int] | None], ids: Sequence[int], tok: Any
) -> list[str]:
    """Each token's text: its span of the question, or the special token's name."""
    pieces = tok.convert_ids_to_tokens(list(ids))
    out = []
    for i, span in enumerate(offsets):
        if span is not None:
            out.append(question[span[0] : span[1]])
        else:
            out.append(str(pieces[i]) if i < len(pieces) else "<eos>")
    return out


def routing_arrays(
    model: CodiModel,
    chunk: Sequence[Problem],
    routing: torch.Tensor,
    q_lens: torch.Tensor,
    width: int,
) -> dict[str, np.ndarray]:
    """``routing`` (B, L, T, P) to the read-out's arrays over ``width`` question positions."""
    batch, n_layers, n_thoughts, prompt_width = routing.shape
    att = np.full((batch, n_layers, n_thoughts, width), np.nan, dtype=np.float16)
    roles = np.full((batch, width), -1, dtype=np.int8)
    operands = np.zeros((batch, width), dtype=np.int32)
    tokens = np.full((batch, width), "", dtype=object)
    steps = np.zeros(batch, dtype=np.int32)
    values = routing.float().cpu().numpy()
    for row, problem in enumerate(chunk):
        q = int(q_lens[row])
        offsets = question_offsets(model, problem.question)
        if len(offsets) != q:
            raise RuntimeError(
                f"problem {problem.id}: {len(offsets)} question tokens, but q_len is {q}"
            )
        first = prompt_width - 1 - q  # <bot> is the last prompt column
        att[row, :, :, :q] = values[row, :, :, first : prompt_width - 1]
        tagged = tag_question(problem.question, problem.cot)
        codes, masks = token_roles(problem.question, tagged, offsets)
        roles[row, :q] = codes
        operands[row, :q] = masks
        ids = model.tokenizer(problem.question)["input_ids"]
        tokens[row, :q] = _texts(problem.question, offsets, ids, model.tokenizer)
        steps[row] = tagged.n_steps
    return {
        "routing": att,
        "routing-roles": roles,
        "routing-operands": operands,
        "routing-tokens": tokens.astype(str),
        "routing-steps": steps,
    }
