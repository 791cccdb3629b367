"""RQ4 interchange interventions: donor choice, counterfactual answers, patched runs.

For a recipient problem, thought t and step k (1-based), thought t's input embedding is
replaced by a donor problem's (its clean run's) and everything downstream is recomputed.
Donors per (recipient, step k), shared by every thought:

- ``same``: another problem whose step-k value equals the recipient's (the answer should
  not move);
- ``different``: one whose step-k value differs, chosen so that the *counterfactual
  answer* (the recipient's chain replayed from step k with the donor's value, see
  :func:`counterfactual_answer`) exists, differs from the recipient's answer, and the
  replayed chain stays among the values the task takes (:class:`ValueDomain`);
- ``random``: any other problem (the baseline: how often a patch gives the counterfactual
  answer of the ``different`` donor by chance).

Donors of the recipient's step count are preferred. The patch is the engine's: the
``resample`` ablation of :mod:`codi_fixtures.study.interventions` (:func:`build_patch`) over a
reference whose donor table is the chosen donors, run by :func:`run_latent` with
the recipient's gold answer teacher-forced (Δ log p) and greedy decoding (the answer).
"""

from __future__ import annotations

import ast
import functools
import operator
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from codi_fixtures.answers import format_number
from codi_fixtures.engine import answer_targets, build_prompt, run_latent
from codi_fixtures.model import CodiModel
from codi_fixtures.study.interventions import Ablation, AblationRef, build_patch
from codi_fixtures.study.problems import Problem

__all__ = [
    "DONOR_KINDS",
    "Donors",
    "InterchangeRun",
    "ValueDomain",
    "choose_donors",
    "counterfactual_answer",
    "counterfactual_chain",
    "parse_chain",
    "run_interchange",
]

DONOR_KINDS = ("same", "different", "random")
_VALUE_TOLERANCE = 1e-6  # replayed chains are float arithmetic
_EQUATION = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def parse_chain(cot: str) -> list[tuple[str, float]]:
    """``<<a+b=c>>`` annotations as (expression, result) pairs, in order."""
    out = []
    for expr, result in _EQUATION.findall(cot):
        try:
            out.append((expr.strip(), float(result.replace(",", "").strip())))
        except ValueError:
            return []
    return out


def _evaluate(expr: str) -> float | None:
    """Value of an arithmetic expression (+ - * / and parentheses), or None."""
    try:
        node = ast.parse(expr.replace(",", ""), mode="eval").body
    except SyntaxError:
        return None

    def walk(n: ast.AST) -> float:
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            return float(n.value)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -walk(n.operand)
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](walk(n.left), walk(n.right))
        raise ValueError(f"unsupported expression {ast.dump(n)}")

    try:
        return walk(node)
    except (ValueError, ZeroDivisionError):
        return None


@dataclass(frozen=True)
class _Replay:
    """How a chain's later equations take a change of one step's result.

    Which operand carries which result does not depend on the new value, so this is worked
    out once per (problem, step) and only the arithmetic is redone per value. Per later
    equation: its text around its operands, each operand as (source, number) -- ``"given"``
    (the number itself), ``"running"`` (the previous replayed result: a linear chain's
    first operand) or ``"result"`` (the replayed value of the step whose original result
    the number is) -- and its original result.
    """

    equations: tuple[tuple[tuple[str, ...], tuple[tuple[str, float], ...], float], ...]
    changed_result: float  # the original result of the changed step


@functools.lru_cache(maxsize=65536)
def _replay_of(problem: Problem, step: int, literal_operands: bool) -> _Replay | None:
    """The replay plan of :func:`counterfactual_chain`, or None where it gives no chain."""
    chain = parse_chain(problem.cot)
    if not 1 <= step <= len(chain) or (
        problem.intermediates and len(problem.intermediates) != len(chain)
    ):
        return None
    linear = all(
        (m := _NUMBER.match(expr)) is not None and float(m.group()) == chain[j - 1][1]
        for j, (expr, _) in enumerate(chain)
        if j > 0
    )
    given = {float(x) for x in _NUMBER.findall(problem.question.replace(",", ""))}
    results = [r for _, r in chain]
    earlier = set(results[: step - 1])  # results the change leaves as they are
    changed = {results[step - 1]}
    equations = []
    for expr, result in chain[step:]:
        texts: list[str] = []
        operands: list[tuple[str, float]] = []
        end = 0
        for mt in _NUMBER.finditer(expr):
            number = float(mt.group())
            if linear and mt.start() == 0:
                source = "running"
            elif number not in changed or (linear and (literal_operands or number in given)):
                source = "given"
            elif linear or number in given or number in earlier:
                return None  # ambiguous: changed result, given, or an unchanged result?
            else:
                source = "result"
            texts.append(expr[end : mt.start()])
            operands.append((source, number))
            end = mt.end()
        texts.append(expr[end:])
        equations.append((tuple(texts), tuple(operands), result))
        changed.add(result)
    return _Replay(tuple(equations), results[step - 1])


def counterfactual_chain(
    problem: Problem, step: int, value: float, *, literal_operands: bool = False
) -> list[float] | None:
    """Step ``step``'s (1-based) result set to ``value``, and the later results recomputed.

    Which operands of the later equations carry a changed result and which are givens:

    - a linear chain (each equation's first operand is the previous result, as in the
      organism's task): the first operand carries it; another operand equal to a changed
      result is a given when the question writes that number (the organism's "loses 4"
      after a step whose result was 4), and otherwise ambiguous (an earlier result reused,
      as GSM8K's ``<<17-12=5>>`` after ``<<3*4=12>>``, or a number word such as "doubles");
    - any other chain: an operand equal to a changed result carries it unless the question
      writes that number too, or an earlier step (left unchanged) had that result: ambiguous.

    A linear chain's later operand that the question writes is taken for a given by
    convention (it may in principle be a reused result that the question happens to write).

    Ambiguous replays return None (a guessed target would be a wrong one), as do a missing
    chain, one that does not match ``intermediates``, and one that cannot be evaluated.
    ``literal_operands=True`` is for chains known to be written as "previous result, then
    givens" (the organism generator's, which its training recipe replays): in a linear chain
    every operand but the first is then a given, with no ambiguity.
    """
    replay = _replay_of(problem, step, literal_operands)
    if replay is None:
        return None
    changed = {replay.changed_result: value}
    current = value
    out = [value]
    for texts, operands, result in replay.equations:
        parts = [texts[0]]
        for (source, number), text in zip(operands, texts[1:], strict=True):
            if source == "given":
                x = number
            elif source == "running":
                x = current
            else:
                x = changed[number]
            parts += [format_number(x), text]
        new = _evaluate("".join(parts))
        if new is None:
            return None
        changed[result] = new
        current = new
        out.append(new)
    return out


def counterfactual_answer(
    problem: Problem, step: int, value: float, *, literal_operands: bool = False
) -> float | None:
    """The answer of ``problem`` with step ``step``'s (1-based) result set to ``value``.

    The last value of :func:`counterfactual_chain`; None where it is None.
    """
    chain = counterfactual_chain(problem, step, value, literal_operands=literal_operands)
    return None if chain is None else chain[-1]


def _is_integer(value: float) -> bool:
    """An integer up to the float error of replayed chains."""
    return abs(value - round(value)) <= _VALUE_TOLERANCE


@dataclass(frozen=True)
class ValueDomain:
    """The values a problem set's chains take: a counterfactual must stay inside them.

    A counterfactual whose replayed chain leaves the values the task ever produces (e.g. 23
    or -4 for an organism whose values are 0..19, or 2.5 where every value is an integer)
    is not an input of the task: its "answer" tests extrapolation, not what the patched
    thought carries, and would count as a miss for every model.
    """

    low: float
    high: float
    integers: bool  # every observed value is an integer

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> ValueDomain | None:
        """The range (and integrality) of every step value and answer; None without any."""
        values = [float(v) for p in problems for v in (*p.intermediates, p.answer)]
        if not values:
            return None
        return cls(min(values), max(values), all(_is_integer(v) for v in values))

    def contains(self, values: Sequence[float]) -> bool:
        """Every value inside the range (and an integer where the set's values all are).

        Within a float tolerance: a replayed ``60*1.1`` is 66.00000000000001.
        """
        tol = _VALUE_TOLERANCE
        return all(
            self.low - tol <= v <= self.high + tol and (not self.integers or _is_integer(v))
            for v in values
        )

    def as_tuple(self) -> tuple[float, float, bool]:
        """(low, high, integers): the form :class:`~codi_fixtures.config.RunConfig` keeps."""
        return (self.low, self.high, self.integers)


@dataclass(frozen=True)
class Donors:
    """Donor problem index per (recipient, step, kind); -1 = none found."""

    same: np.ndarray  # (N, K) int64, column k-1 = step k
    different: np.ndarray  # (N, K)
    random: np.ndarray  # (N, K)
    counterfactual: np.ndarray  # (N, K) float: answer under the different donor's value


def choose_donors(
    problems: Sequence[Problem],
    *,
    max_steps: int | None = None,
    domain: ValueDomain | None = None,
    seed: int = 0,
    literal_operands: bool = False,
) -> Donors:
    """Seeded donors for every recipient and step (see the module docstring).

    ``literal_operands``: replay the chains by the organism generator's convention
    (:func:`counterfactual_chain`); the suite leaves it off, as it cannot know where a
    problem file's chains come from.

    ``domain``: a counterfactual chain that leaves it (any replayed step value or the
    answer) does not qualify a donor; the suite passes its problem source's
    (:meth:`ValueDomain.of` over every problem of the file: 0..19, integers, for the
    organisms' held-out sets).
    """
    k_max = max_steps or max((len(p.intermediates) for p in problems), default=0)
    n = len(problems)
    shape = (n, k_max)
    same, diff, rand = (np.full(shape, -1, dtype=np.int64) for _ in range(3))
    cf = np.full(shape, np.nan)
    rng = random.Random(f"codi-interchange:{seed}")
    by_step: dict[int, list[int]] = {}
    for k in range(1, k_max + 1):
        by_step[k] = [i for i, p in enumerate(problems) if len(p.intermediates) >= k]
    for r, rec in enumerate(problems):
        for k in range(1, min(len(rec.intermediates), k_max) + 1):
            pool = [i for i in by_step[k] if i != r]
            if not pool:
                continue
            value = rec.intermediates[k - 1]

            def pick(cands: list[int], steps: int = rec.steps) -> int:
                pref = [i for i in cands if problems[i].steps == steps]
                return rng.choice(pref or cands) if cands else -1

            same[r, k - 1] = pick([i for i in pool if problems[i].intermediates[k - 1] == value])
            options = []
            for i in pool:
                other = problems[i].intermediates[k - 1]
                if other == value:
                    continue
                chain = counterfactual_chain(rec, k, other, literal_operands=literal_operands)
                if chain is None or abs(chain[-1] - rec.answer) <= _VALUE_TOLERANCE:
                    continue
                if domain is not None and not domain.contains(chain):
                    continue
                options.append((i, chain[-1]))
            chosen = pick([i for i, _ in options])
            if chosen >= 0:
                diff[r, k - 1] = chosen
                cf[r, k - 1] = dict(options)[chosen]
            rand[r, k - 1] = rng.choice(pool)
    return Donors(same, diff, rand, cf)


@dataclass(frozen=True)
class InterchangeRun:
    """Per patched row (R rows) and per problem (N), as numpy arrays."""

    recipient: np.ndarray  # (R,) int64
    thought: np.ndarray  # (R,) int64, 0-based
    step: np.ndarray  # (R,) int64, 1-based
    kind: list[str]  # (R,) one of DONOR_KINDS
    donor: np.ndarray  # (R,) int64
    answer: np.ndarray  # (R,) float, nan = no parseable answer
    logp: np.ndarray  # (R,) log p(recipient's gold | patched), teacher-forced
    counterfactual: np.ndarray  # (R,) the different donor's counterfactual answer
    clean_answer: np.ndarray  # (N,)
    clean_logp: np.ndarray  # (N,)

    @property
    def delta_logp(self) -> np.ndarray:
        """(R,) log p(gold | clean) - log p(gold | patched)."""
        return self.clean_logp[self.recipient] - self.logp


@torch.no_grad()
def run_interchange(
    model: CodiModel,
    problems: Sequence[Problem],
    donors: Donors,
    cells: Sequence[tuple[int, int]],
    *,
    batch_rows: int = 2048,
    max_new_tokens: int = 12,
) -> InterchangeRun:
    """Patch thought t with each donor kind for every (thought t, step k) in ``cells``.

    Every problem's clean thoughts come from one clean run; each problem's question
    prefix is encoded once per chunk and all its rows branch from it.
    """
    n = len(problems)
    prompt_all = build_prompt(model, [p.question for p in problems])
    clean_thoughts = run_latent(model, prompt_all, generate=False).thoughts.float().cpu()
    specs: list[tuple[int, int, int, str, int]] = []  # (recipient, t, k, kind, donor)
    for r in range(n):
        for t, k in cells:
            if k > donors.same.shape[1]:
                continue
            table = {"same": donors.same, "different": donors.different, "random": donors.random}
            if donors.different[r, k - 1] < 0:
                continue  # no counterfactual: the cell is not measured for this recipient
            for kind in DONOR_KINDS:
                d = int(table[kind][r, k - 1])
                if d >= 0:
                    specs.append((r, t, k, kind, d))
    clean_answer = np.full(n, np.nan)
    clean_logp = np.zeros(n)
    answers = np.full(len(specs), np.nan)
    logp = np.zeros(len(specs))
    by_recipient: dict[int, list[int]] = {}
    for i, spec in enumerate(specs):
        by_recipient.setdefault(spec[0], []).append(i)
    chunk: list[int] = []
    rows_in_chunk = 0
    for r in range(n):
        chunk.append(r)
        rows_in_chunk += 1 + len(by_recipient.get(r, []))
        if rows_in_chunk >= batch_rows or r == n - 1:
            outputs = (clean_answer, clean_logp, answers, logp)
            _run_chunk(
                model, problems, chunk, by_recipient, specs, clean_thoughts, outputs, max_new_tokens
            )
            chunk, rows_in_chunk = [], 0
    arr = np.array([(*s[:3], s[4]) for s in specs], dtype=np.int64).reshape(-1, 4)
    cf = np.array([donors.counterfactual[s[0], s[2] - 1] for s in specs])
    return InterchangeRun(
        recipient=arr[:, 0],
        thought=arr[:, 1],
        step=arr[:, 2],
        kind=[s[3] for s in specs],
        donor=arr[:, 3],
        answer=answers,
        logp=logp,
        counterfactual=cf,
        clean_answer=clean_answer,
        clean_logp=clean_logp,
    )


def _run_chunk(
    model: CodiModel,
    problems: Sequence[Problem],
    chunk: list[int],
    by_recipient: dict[int, list[int]],
    specs: list[tuple[int, int, int, str, int]],
    clean_thoughts: torch.Tensor,
    out: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    max_new_tokens: int,
) -> None:
    """One batch: per recipient a clean row, then its patched rows (resample patches)."""
    clean_answer, clean_logp, answers, logp = out
    prompt = build_prompt(model, [problems[r].question for r in chunk])
    rows: list[int] = []  # prompt row of each run row
    ablations: list[Ablation | None] = []
    spec_of_row: list[int] = []  # -1 = clean row
    donors: list[int] = []  # reference donor of each run row (its own problem when clean)
    for local, r in enumerate(chunk):
        for i in [-1, *by_recipient.get(r, [])]:
            rows.append(local)
            spec_of_row.append(i)
            if i < 0:
                ablations.append(None)
                donors.append(r)
            else:
                _, t, _, _, d = specs[i]
                ablations.append(Ablation((t,), "resample"))
                donors.append(d)
    # A row-level reference: entry j is run row j's recipient, its "resample" donor is the
    # donor problem's clean thoughts (appended after the rows), so build_patch does the rest.
    n_rows = len(rows)
    recipients = [chunk[rows[j]] for j in range(n_rows)]
    values = torch.cat([clean_thoughts[recipients], clean_thoughts])
    ref = AblationRef(
        values=values,
        mean=values,  # unused: only resample rows
        noise=values,
        donors=torch.tensor([n_rows + d for d in donors] + [-1] * len(clean_thoughts)),
    )
    patch = build_patch(ablations, list(range(n_rows)), ref)
    golds = [format_number(problems[r].answer) for r in recipients]
    run = run_latent(
        model,
        prompt,
        rows=torch.tensor(rows),
        patch=patch,
        targets=answer_targets(model, golds),
        max_new_tokens=max_new_tokens,
    )
    assert run.target_logp is not None
    lp = run.target_logp.double().cpu().numpy()
    for j, i in enumerate(spec_of_row):
        ans = run.answers[j]
        value = np.nan if ans is None else float(ans)
        if i < 0:
            clean_answer[recipients[j]] = value
            clean_logp[recipients[j]] = lp[j]
        else:
            answers[i] = value
            logp[i] = lp[j]
