"""Held-out accuracy of a CODI model: latent mode, explicit-CoT mode, and under mean ablation."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from codi_fixtures.answers import numbers_equal, parse_answer
from codi_fixtures.engine import (
    LoopState,
    build_prompt,
    forward_step,
    greedy_decode,
    mask_specials,
    run_latent,
)
from codi_fixtures.interventions import Ablation, AblationRef, build_patch
from codi_fixtures.kvcache import new_cache
from codi_fixtures.model import CodiModel
from codi_fixtures.problems import Problem

__all__ = ["accuracy_by_bin", "cot_answers", "latent_answers", "mean_ablation_answers"]


def _chunks(items: Sequence[Problem], size: int) -> list[list[Problem]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@torch.no_grad()
def latent_answers(
    model: CodiModel, problems: Sequence[Problem], *, batch: int = 200
) -> list[float | None]:
    """Greedy CODI answers (latent mode)."""
    answers: list[float | None] = []
    for chunk in _chunks(problems, batch):
        answers.extend(run_latent(model, build_prompt(model, [p.question for p in chunk])).answers)
    return answers


@torch.no_grad()
def mean_ablation_answers(
    model: CodiModel, problems: Sequence[Problem], thoughts: Sequence[int]
) -> list[float | None]:
    """Answers with the given thoughts' input embeddings set to their mean over ``problems``."""
    prompt = build_prompt(model, [p.question for p in problems])
    clean = run_latent(model, prompt, generate=False)
    ref = AblationRef.from_values(clean.thoughts)
    ablation = Ablation(tuple(thoughts), "mean")
    patch = build_patch([ablation] * len(problems), range(len(problems)), ref)
    return run_latent(model, prompt, patch=patch).answers


@torch.no_grad()
def cot_answers(
    model: CodiModel, problems: Sequence[Problem], *, batch: int = 200, max_new_tokens: int = 96
) -> list[float | None]:
    """Greedy answers in explicit-CoT (teacher) mode: the question, then generated text."""
    answers: list[float | None] = []
    for chunk in _chunks(problems, batch):
        prompt = build_prompt(model, [p.question for p in chunk])
        ids, mask = prompt.input_ids[:, :-1], prompt.attention_mask[:, :-1]  # drop <bot>
        state = LoopState(new_cache(), mask[:, :0], torch.zeros(len(chunk), dtype=torch.long))
        out = forward_step(model, state, input_ids=ids, new_mask=mask, logits=True)
        assert out.logits is not None
        first = mask_specials(model, out.logits[:, -1])
        seqs, _, _ = greedy_decode(model, state, first, max_new_tokens)
        texts = [model.tokenizer.decode(s, skip_special_tokens=True) for s in seqs]
        answers.extend(parse_answer(t, model.spec.answer_prompt) for t in texts)
    return answers


def accuracy_by_bin(
    problems: Sequence[Problem], answers: Sequence[float | None]
) -> dict[str, float]:
    """Percent correct per difficulty bin and ``all``."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for problem, answer in zip(problems, answers, strict=True):
        ok = numbers_equal(answer, problem.answer)
        hits[problem.difficulty].append(ok)
        hits["all"].append(ok)
    return {k: 100.0 * sum(v) / len(v) for k, v in sorted(hits.items())}
