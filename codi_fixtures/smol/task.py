"""English multi-step word problems for the SmolLM2 organism, with known step values.

The bundled organism's task (``codi_fixtures.organism.task``: a start value, then 2-5
``+ - *`` steps, GSM8K-Aug-style equation CoT) in natural English, with two-digit values
(10-99) so that every number spans several BPE tokens (SmolLM2 writes a number as a space
token plus one token per digit). Operands of ``+``/``-`` are 2-9 and ``*`` is x2 or x3 only
while the result stays <= 99: the difficulty is composing the steps, not the arithmetic.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from codi_fixtures.organism.task import STEP_COUNTS, Step
from codi_fixtures.study.problems import Problem, difficulty_bin

__all__ = [
    "MAX_VALUE",
    "MIN_VALUE",
    "STEP_COUNTS",
    "Draw",
    "generate_problem",
    "legal_steps",
    "make_splits",
    "make_validation",
    "render",
]

MIN_VALUE = 10
MAX_VALUE = 99

_PEOPLE = (
    ("Tom", "he", "his"),
    ("Anna", "she", "her"),
    ("Ben", "he", "his"),
    ("Lucy", "she", "her"),
    ("Sam", "he", "his"),
    ("Emma", "she", "her"),
    ("Max", "he", "his"),
    ("Zoe", "she", "her"),
    ("Leo", "he", "his"),
    ("Mia", "she", "her"),
    ("Noah", "he", "his"),
    ("Grace", "she", "her"),
)
OBJECTS = (
    "apples",
    "coins",
    "books",
    "cards",
    "shells",
    "pencils",
    "stamps",
    "marbles",
    "eggs",
    "stickers",
    "cookies",
    "balloons",
)
_START = (
    "{name} has {n} {obj}.",
    "{name} starts the day with {n} {obj}.",
    "There are {n} {obj} in {name}'s box.",
    "{name} owns {n} {obj}.",
)
_ADD = (
    "{Pro} buys {k} more.",
    "Then {pro} finds {k} more {obj}.",
    "A friend gives {name} {k} more {obj}.",
    "After that, {pro} wins {k} more.",
    "{Pro} gets another {k} {obj}.",
)
_SUB = (
    "{Pro} gives {k} {obj} to a friend.",
    "Then {pro} loses {k} of them.",
    "{Pro} sells {k} {obj} at the market.",
    "After that, {pro} uses {k} {obj}.",
    "{Pro} gives away {k}.",
)
_MUL = {
    2: ("Then the number of {obj} doubles.", "{Pro} doubles {pos} {obj}."),
    3: ("Then the number of {obj} triples.", "{Pro} triples {pos} {obj}."),
}
_ASK = ("How many {obj} does {name} have now?", "How many {obj} does {name} have at the end?")


@dataclass(frozen=True)
class Draw:
    """A drawn problem before rendering: start value, steps, person index, object."""

    start: int
    steps: tuple[Step, ...]
    person: int
    obj: str

    @property
    def values(self) -> tuple[int, ...]:
        """Value after each step (the last one is the answer)."""
        out, value = [], self.start
        for step in self.steps:
            value = step.apply(value)
            out.append(value)
        return tuple(out)


def legal_steps(value: int) -> list[Step]:
    """Steps whose result stays in [MIN_VALUE, MAX_VALUE]."""
    steps = [Step("+", k) for k in range(2, 10) if value + k <= MAX_VALUE]
    steps += [Step("-", k) for k in range(2, 10) if value - k >= MIN_VALUE]
    steps += [Step("*", k) for k in (2, 3) if value * k <= MAX_VALUE]
    return steps


def generate_problem(rng: random.Random, n_steps: int) -> Draw:
    """Draw an ``n_steps``-step problem."""
    start = rng.randint(MIN_VALUE, 60)
    value, steps = start, []
    for _ in range(n_steps):
        step = rng.choice(legal_steps(value))
        steps.append(step)
        value = step.apply(value)
    return Draw(start, tuple(steps), rng.randrange(len(_PEOPLE)), rng.choice(OBJECTS))


def render(draw: Draw, rng: random.Random, pid: str) -> Problem:
    """English question, equation CoT (``<<a+b=c>> ...``) and intermediates of a draw."""
    name, pro, pos = _PEOPLE[draw.person]
    fields = {"name": name, "pro": pro, "Pro": pro.capitalize(), "pos": pos, "obj": draw.obj}
    sentences = [rng.choice(_START).format(n=draw.start, **fields)]
    value, equations = draw.start, []
    for step in draw.steps:
        if step.op == "+":
            template = rng.choice(_ADD)
        elif step.op == "-":
            template = rng.choice(_SUB)
        else:
            template = rng.choice(_MUL[step.operand])
        sentences.append(template.format(k=step.operand, **fields))
        new = step.apply(value)
        equations.append(f"<<{value}{step.op}{step.operand}={new}>>")
        value = new
    sentences.append(rng.choice(_ASK).format(**fields))
    return Problem(
        id=pid,
        question=" ".join(sentences),
        answer=float(value),
        steps=len(draw.steps),
        difficulty=difficulty_bin(len(draw.steps)),
        intermediates=tuple(float(v) for v in draw.values),
        cot=" ".join(equations),
    )


def _stream(seed: int, prefix: str, step_counts: Sequence[int]) -> Iterator[Problem]:
    rng = random.Random(seed)
    index = 0
    while True:
        n_steps = step_counts[index % len(step_counts)]
        yield render(generate_problem(rng, n_steps), rng, f"smol-{prefix}-{index}")
        index += 1


def make_splits(
    n_train: int, n_eval_per_bin: int, seed: int = 0
) -> tuple[list[Problem], list[Problem]]:
    """Train and eval problems, balanced over 2-5 steps; no question appears in both."""
    evals: list[Problem] = []
    seen: set[str] = set()
    per_bin = dict.fromkeys(STEP_COUNTS, 0)
    for problem in _stream(seed + 1_000_003, "eval", STEP_COUNTS):
        if all(v >= n_eval_per_bin for v in per_bin.values()):
            break
        if problem.question in seen or per_bin[problem.steps] >= n_eval_per_bin:
            continue
        seen.add(problem.question)
        per_bin[problem.steps] += 1
        evals.append(problem)
    train: list[Problem] = []
    for problem in _stream(seed, "train", STEP_COUNTS):
        if len(train) >= n_train:
            break
        if problem.question not in seen:
            train.append(problem)
    evals.sort(key=lambda p: (p.steps, int(p.id.rsplit("-", 1)[1])))
    return train, evals


def make_validation(n_per_bin: int, seed: int, exclude: Sequence[Problem]) -> list[Problem]:
    """A validation set for monitoring and recipe choice, disjoint from ``exclude``.

    Drawn from its own stream, balanced over 2-5 steps; no question of ``exclude`` (the
    train and held-out sets) appears in it, so choosing a recipe by validation accuracy
    leaves the held-out numbers untouched.
    """
    seen = {p.question for p in exclude}
    per_bin = dict.fromkeys(STEP_COUNTS, 0)
    out: list[Problem] = []
    for problem in _stream(seed + 2_000_003, "val", STEP_COUNTS):
        if all(v >= n_per_bin for v in per_bin.values()):
            break
        if problem.question in seen or per_bin[problem.steps] >= n_per_bin:
            continue
        seen.add(problem.question)
        per_bin[problem.steps] += 1
        out.append(problem)
    return out
