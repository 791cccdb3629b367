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
from codi_fixtures.model import CodiModel
from codi_fixtures.model.kvcache import new_cache
from codi_fixtures.organism.task import MAX_VALUE
from codi_fixtures.organism.train import thought_lens_logits, value_target
from codi_fixtures.stats.decoding import iia_summary_of
from codi_fixtures.study.interchange import ValueDomain, choose_donors, run_interchange
from codi_fixtures.study.interventions import Ablation, AblationRef, build_patch
from codi_fixtures.study.problems import Problem

__all__ = [
    "accuracy_by_bin",
    "cot_answers",
    "latent_answers",
    "mean_ablation_answers",
    "planted_interchange_rates",
    "planted_lens_rates",
]


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
        state = LoopState(
            new_cache(), mask[:, :0], torch.zeros(len(chunk), dtype=torch.long, device=mask.device)
        )
        out = forward_step(model, state, input_ids=ids, new_mask=mask, logits=True)
        assert out.logits is not None
        first = mask_specials(model, out.logits[:, -1])
        seqs, _, _ = greedy_decode(model, state, first, max_new_tokens)
        texts = [model.tokenizer.decode(s, skip_special_tokens=True) for s in seqs]
        answers.extend(parse_answer(t, model.spec.answer_prompt) for t in texts)
    return answers


@torch.no_grad()
def planted_lens_rates(
    model: CodiModel, problems: Sequence[Problem]
) -> dict[str, dict[str, float]]:
    """Per thought t: how often the logit lens on its input embedding names step t+1's value.

    ``first_token``: % of problems with a step t+1 whose lens argmax (over the vocabulary,
    specials excluded) is the value's first token. ``value``: % whose decoded value is the
    value, decoding as the value 0..MAX_VALUE whose planted target distribution
    (:func:`value_target`) is closest in KL to the lens distribution. ``n``: problems with
    a step t+1. On a model trained without the planted loss this measures the same readout
    where nothing was planted (the control).
    """
    clean = run_latent(model, build_prompt(model, [p.question for p in problems]), generate=False)
    logp = torch.log_softmax(
        mask_specials(model, thought_lens_logits(model, clean.thoughts)).float(), dim=-1
    )  # (B, T, V+3)
    values = list(range(MAX_VALUE + 1))
    table = torch.zeros((len(values), logp.shape[-1]))
    for i, v in enumerate(values):
        for token, w in value_target(model, v).items():
            table[i, token] = w
    entropy = torch.special.xlogy(table, table).sum(dim=-1)  # sum t log t, per value
    # KL(target_v || p) = sum t log t - sum t log p; -inf logp only on specials, where t = 0
    cross = torch.einsum("vk,btk->btv", table, logp.clamp_min(-1e4))
    decoded = torch.tensor(values)[(entropy - cross).argmin(dim=-1)]  # (B, T)
    first = logp.argmax(dim=-1)  # (B, T)
    rates: dict[str, dict[str, float]] = {}
    for t in range(logp.shape[1]):
        rows = [(b, p) for b, p in enumerate(problems) if len(p.intermediates) > t]
        if not rows:
            continue
        # the target's first key is the value's first token (insertion order)
        hits_first = sum(
            int(first[b, t]) == next(iter(value_target(model, p.intermediates[t]))) for b, p in rows
        )
        hits_value = sum(int(decoded[b, t]) == int(p.intermediates[t]) for b, p in rows)
        rates[f"t{t}"] = {
            "n": float(len(rows)),
            "first_token": 100.0 * hits_first / len(rows),
            "value": 100.0 * hits_value / len(rows),
        }
    return rates


@torch.no_grad()
def planted_interchange_rates(
    model: CodiModel, problems: Sequence[Problem]
) -> dict[str, dict[str, float]]:
    """Per thought t: how often patching it with a donor's gives the counterfactual answer.

    The suite's RQ4 interchange machinery (:func:`~codi_fixtures.study.interchange.choose_donors`,
    seed 0, counterfactual chains in the task's values 0..MAX_VALUE, replayed by the
    generator's convention, where the suite gives ambiguous replays no donor;
    :func:`~codi_fixtures.study.interchange.run_interchange`) on the planted cells (thought
    t, step t+1): ``iia`` = % of recipients whose answer with thought t's input embedding
    replaced by the *different*-value donor's is the counterfactual answer; ``random`` = the
    same rate with a random donor's thought (chance); ``n``: recipients with such a donor.
    """
    donors = choose_donors(
        problems,
        domain=ValueDomain(0, MAX_VALUE, integers=True),
        seed=0,
        literal_operands=True,  # the generator's own chains, as when the rates were recorded
    )
    cells = [(t, t + 1) for t in range(min(model.spec.n_thoughts, donors.different.shape[1]))]
    run = run_interchange(model, problems, donors, cells)
    summary = iia_summary_of(run)
    return {
        f"t{c.thought}": {
            "n": float(c.n),
            "iia": 100.0 * c.iia,
            "random": 100.0 * c.random_baseline,
        }
        for c in summary
    }


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
