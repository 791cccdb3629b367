"""Hidden-state readouts of CODI runs (RQ3): block outputs, input embeddings, logit lens.

Everything runs through the one engine: :func:`~codi_fixtures.engine.encode_prompt` under
block-output hooks (the question's own positions), then
:func:`~codi_fixtures.engine.run_thoughts` with ``capture_layers`` (the thoughts). Each
problem's question prefix is encoded once. Results are plain numpy arrays, so the
statistics (:mod:`codi_fixtures.stats.decoding`) never touch torch.

Sites, per problem:

- positions ``q_last`` (the last question token, column P-2, or P-3 when an eos separates
  question and ``<bot>``), ``bot`` (``<bot>``, position Q) and ``t0``..``t{T-1}``
  (thought t, position Q+1+t);
- layers ``emb`` (the input embedding at that position: a token embedding for ``q_last``
  and ``bot``, the fed latent ``z_t`` for a thought) and ``L0``..``L{n-1}`` (the output of
  decoder block L at that position, before the final norm).

Targets: the first token of each step value (``Problem.intermediates``) and of the final
answer, tokenized as the value appears after the answer prompt (``"The answer is: 12"``).
A value whose first token is the tokenizer's unknown token, or does not spell the start of
the value, is *undecodable*: its rank is -1 and it is listed in ``Readouts.undecodable``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from codi_fixtures.answers import format_number
from codi_fixtures.engine import (
    answer_targets,
    build_prompt,
    encode_prompt,
    mask_specials,
    run_latent,
    run_thoughts,
)
from codi_fixtures.model import CodiModel
from codi_fixtures.model.architecture import unwrap_peft
from codi_fixtures.model.hooks import block_output_hook
from codi_fixtures.study.interventions import Ablation, AblationKind, AblationRef, build_patch
from codi_fixtures.study.problems import Problem

__all__ = [
    "Readouts",
    "ablation_importance",
    "collect_readouts",
    "first_token_ids",
    "lens_logits",
    "position_names",
    "site_names",
]


def position_names(n_thoughts: int) -> tuple[str, ...]:
    """``("q_last", "bot", "t0", ..., "t{T-1}")``."""
    return ("q_last", "bot", *(f"t{t}" for t in range(n_thoughts)))


def site_names(layers: Sequence[int]) -> tuple[str, ...]:
    """``("emb", "L<l>" for each layer)``."""
    return ("emb", *(f"L{layer}" for layer in layers))


@dataclass(frozen=True)
class Readouts:
    """Readouts of N problems at P positions x S sites; K targets (steps, then the answer).

    Column ``k`` of the targets is step ``k+1``'s value for ``k < K-1``; the last column is
    the final answer. A problem with fewer steps (or none recorded) has -1 / nan there.
    """

    problem_ids: list[str]
    positions: tuple[str, ...]
    sites: tuple[str, ...]
    n_steps: np.ndarray  # (N,) number of recorded step values (0 = none)
    steps: np.ndarray  # (N,) Problem.steps (the difficulty)
    difficulty: list[str]
    target_values: np.ndarray  # (N, K) float, nan = no such target
    target_tokens: np.ndarray  # (N, K) int64 first token id, -1 = none or undecodable
    lens_rank: np.ndarray  # (N, P, S, K) int32, 0 = top-1; -1 where the target is missing
    lens_prob: np.ndarray  # (N, P, S, K) float32 lens probability of that token
    lens_top: np.ndarray  # (N, P, S) int32 the lens argmax token
    hidden: np.ndarray | None  # (N, P, S, d) float16, when kept
    undecodable: list[tuple[str, int, float]] = field(default_factory=list)
    """(problem id, target column, value) of each target whose first token is not a token."""

    @property
    def n_targets(self) -> int:
        """K: step columns plus the answer column."""
        return int(self.target_tokens.shape[1])


def lens_logits(model: CodiModel, vectors: torch.Tensor) -> torch.Tensor:
    """The logit lens: final norm, then the LM head, on ``(..., d)``; specials set to -inf."""
    decoder: Any = unwrap_peft(model.codi).base_model
    norm = getattr(decoder, "norm", None) or getattr(decoder, "ln_f", None)
    if norm is None:
        raise NotImplementedError(f"no final norm found on {type(decoder).__name__}")
    head = model.codi.get_output_embeddings()
    return mask_specials(model, head(norm(vectors.to(model.dtype))).float())


def first_token_ids(model: CodiModel, values: Sequence[float]) -> tuple[list[int], list[bool]]:
    """First token of each value after the answer prompt, and whether it is decodable.

    The number's first token as :func:`answer_targets` scores it (a whitespace-only token
    between the prompt and the number, as SmolLM2 writes, is not the number's).
    """
    if not values:
        return [], []
    texts = [format_number(v) for v in values]
    targets, n_prompt = answer_targets(model, texts)
    unk = getattr(model.tokenizer, "unk_token_id", None)
    ids, ok = [], []
    for text, seq, skip in zip(texts, targets, n_prompt, strict=True):
        token = int(seq[skip]) if len(seq) > skip + 1 else -1  # the last id is eos
        piece = model.tokenizer.decode([token]).strip() if token >= 0 else ""
        good = token >= 0 and token != unk and bool(piece) and text.startswith(piece)
        ids.append(token)
        ok.append(good)
    return ids, ok


def _targets(
    model: CodiModel, problems: Sequence[Problem], max_steps: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, float]]]:
    """(values (N, K), first tokens (N, K), undecodable) with K = max_steps + 1."""
    k = max_steps + 1
    values = np.full((len(problems), k), np.nan)
    for row, p in enumerate(problems):
        values[row, : len(p.intermediates[:max_steps])] = p.intermediates[:max_steps]
        values[row, -1] = p.answer
    flat = [(r, c) for r in range(len(problems)) for c in range(k) if np.isfinite(values[r, c])]
    ids, ok = first_token_ids(model, [float(values[r, c]) for r, c in flat])
    tokens = np.full((len(problems), k), -1, dtype=np.int64)
    bad = []
    for (r, c), token, good in zip(flat, ids, ok, strict=True):
        if good:
            tokens[r, c] = token
        else:
            bad.append((problems[r].id, c, float(values[r, c])))
    return values, tokens, bad


@torch.no_grad()
def _site_vectors(
    model: CodiModel, problems: Sequence[Problem], layers: Sequence[int]
) -> torch.Tensor:
    """(B, 2 + T, 1 + len(layers), d) float32: every position x site of one batch."""
    prompt = build_prompt(model, [p.question for p in problems])
    width = prompt.width
    q_col = width - 3 if model.spec.eos_before_bot else width - 2
    cols = torch.tensor([q_col, width - 1], device=prompt.input_ids.device)
    prefix: dict[int, torch.Tensor] = {}

    def recorder(layer: int) -> Callable[[torch.Tensor], None]:
        def fn(out: torch.Tensor) -> None:
            prefix[layer] = out.index_select(1, cols).detach().float()

        return fn

    with ExitStack() as stack:
        for layer in layers:
            stack.enter_context(block_output_hook(model.codi, layer, recorder(layer)))
        state, bot_hidden = encode_prompt(model, prompt)
    thoughts, blocks, _ = run_thoughts(
        model, state, bot_hidden, n_thoughts=model.spec.n_thoughts, capture_layers=layers
    )
    emb_prompt = model.embed(prompt.input_ids.index_select(1, cols)).float()  # (B, 2, d)
    sites = [torch.cat([emb_prompt, thoughts.float()], dim=1)]
    sites += [torch.cat([prefix[layer], blocks[layer].float()], dim=1) for layer in layers]
    return torch.stack(sites, dim=2)


@torch.no_grad()
def collect_readouts(
    model: CodiModel,
    problems: Sequence[Problem],
    *,
    layers: Sequence[int] | None = None,
    max_steps: int | None = None,
    keep_hidden: bool = True,
    batch: int = 256,
) -> Readouts:
    """Hidden states (float16) and logit-lens ranks / probabilities (float32) of every site.

    ``layers``: decoder blocks to read (default all); the input embedding is always read.
    ``max_steps``: step columns (default the longest recorded chain).
    """
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    if max_steps is None:
        max_steps = max((len(p.intermediates) for p in problems), default=0)
    values, tokens, bad = _targets(model, problems, max_steps)
    ranks, probs, tops, hidden = [], [], [], []
    for start in range(0, len(problems), batch):
        chunk = problems[start : start + batch]
        vec = _site_vectors(model, chunk, layers)  # (B, P, S, d)
        if keep_hidden:
            hidden.append(vec.half().cpu().numpy())
        logp = torch.log_softmax(lens_logits(model, vec), dim=-1)  # (B, P, S, V+3)
        tok = torch.from_numpy(tokens[start : start + len(chunk)]).to(logp.device)  # (B, K)
        gather = tok.clamp_min(0)[:, None, None, :].expand(*logp.shape[:3], tok.shape[1])
        target = logp.gather(-1, gather)  # (B, P, S, K)
        rank = torch.stack(  # one target at a time: memory B x P x S x V, not x K
            [(logp > target[..., k : k + 1]).sum(dim=-1) for k in range(tok.shape[1])], dim=-1
        ).to(torch.int32)
        missing = (tok < 0)[:, None, None, :].expand_as(rank)
        ranks.append(rank.masked_fill(missing, -1).cpu().numpy())
        probs.append(target.exp().masked_fill(missing, float("nan")).cpu().numpy())
        tops.append(logp.argmax(dim=-1).to(torch.int32).cpu().numpy())
    return Readouts(
        problem_ids=[p.id for p in problems],
        positions=position_names(model.spec.n_thoughts),
        sites=site_names(layers),
        n_steps=np.array([len(p.intermediates) for p in problems]),
        steps=np.array([p.steps for p in problems]),
        difficulty=[p.difficulty for p in problems],
        target_values=values,
        target_tokens=tokens,
        lens_rank=np.concatenate(ranks),
        lens_prob=np.concatenate(probs).astype(np.float32),
        lens_top=np.concatenate(tops),
        hidden=np.concatenate(hidden) if keep_hidden else None,
        undecodable=bad,
    )


@torch.no_grad()
def ablation_importance(
    model: CodiModel,
    problems: Sequence[Problem],
    *,
    kind: AblationKind = "mean",
    seed: int = 0,
    batch: int = 64,
) -> np.ndarray:
    """(N, T) RQ1 importance: Δ log p(gold) when thought t's input embedding is ablated.

    The same conditions as the study (``Ablation((t,), kind)``, references over
    ``problems``, leave-one-out), teacher-forced, no decoding.
    """
    prompt_all = build_prompt(model, [p.question for p in problems])
    clean = run_latent(model, prompt_all, generate=False)
    ref = AblationRef.from_values(clean.thoughts, seed=seed)
    n_thoughts = model.spec.n_thoughts
    out = np.zeros((len(problems), n_thoughts))
    for start in range(0, len(problems), batch):
        chunk = list(range(start, min(start + batch, len(problems))))
        prompt = build_prompt(model, [problems[i].question for i in chunk])
        per = 1 + n_thoughts
        rows = torch.arange(len(chunk)).repeat_interleave(per)
        ablations: list[Ablation | None] = [None] + [
            Ablation((t,), kind) for t in range(n_thoughts)
        ]
        patch = build_patch(ablations * len(chunk), [chunk[int(r)] for r in rows], ref)
        golds = [format_number(problems[chunk[int(r)]].answer) for r in rows]
        run = run_latent(
            model,
            prompt,
            rows=rows,
            patch=patch,
            targets=answer_targets(model, golds),
            generate=False,
        )
        assert run.target_logp is not None
        logp = run.target_logp.double().cpu().numpy().reshape(len(chunk), per)
        out[chunk] = logp[:, :1] - logp[:, 1:]
    return out
