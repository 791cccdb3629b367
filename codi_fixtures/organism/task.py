"""The synthetic task: templated multi-step arithmetic word problems with known ground truth.

Numbers stay small (start 1-15, every value 0-19, operands 1-9, x2 / x3 only
while the result stays <= 19), so the difficulty is composing 2-5 steps, which
is what the continuous thoughts are for.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from codi_fixtures.study.problems import Problem, difficulty_bin

__all__ = ["MAX_VALUE", "STEP_COUNTS", "Step", "generate_problem", "make_splits", "render"]

MAX_VALUE = 19
STEP_COUNTS = (2, 3, 4, 5)

NAMES = ("Tom", "Ana", "Ben", "Lia", "Sam", "Eva", "Max", "Zoe", "Leo", "Mia", "Ian", "Ada")
OBJECTS = ("apples", "coins", "books", "cards", "shells", "pens", "stamps", "marbles", "eggs")
ADD = ("gets {k} more", "finds {k} more", "buys {k} more", "wins {k} more")
SUB = ("gives away {k}", "loses {k}", "sells {k}", "uses {k}")
MUL = {2: ("doubles the {obj}",), 3: ("triples the {obj}",)}


@dataclass(frozen=True)
class Step:
    """One operation ``value <op> operand``; ``op`` is ``+``, ``-`` or ``*``."""

    op: str
    operand: int

    def apply(self, value: int) -> int:
        """Result of applying this step to ``value``."""
        if self.op == "+":
            return value + self.operand
        if self.op == "-":
            return value - self.operand
        if self.op == "*":
            return value * self.operand
        raise ValueError(f"unknown op {self.op!r}")


def _legal_steps(value: int) -> list[Step]:
    steps = [Step("+", k) for k in range(1, 10) if value + k <= MAX_VALUE]
    steps += [Step("-", k) for k in range(1, 10) if value - k >= 0]
    steps += [Step("*", k) for k in (2, 3) if value * k <= MAX_VALUE and value > 0]
    return steps


def generate_problem(rng: random.Random, n_steps: int) -> tuple[int, tuple[Step, ...], str, str]:
    """Draw (start, steps, name, object) for an ``n_steps``-step problem."""
    start = rng.randint(1, 15)
    value, steps = start, []
    for _ in range(n_steps):
        step = rng.choice(_legal_steps(value))
        steps.append(step)
        value = step.apply(value)
    return start, tuple(steps), rng.choice(NAMES), rng.choice(OBJECTS)


def render(
    start: int, steps: Sequence[Step], name: str, obj: str, rng: random.Random, pid: str
) -> Problem:
    """Turn a drawn problem into a :class:`Problem` with question, CoT and intermediates."""
    sentences = [f"{name} has {start} {obj}."]
    value, equations, values = start, [], []
    for step in steps:
        if step.op == "+":
            phrase = rng.choice(ADD).format(k=step.operand)
        elif step.op == "-":
            phrase = rng.choice(SUB).format(k=step.operand)
        else:
            phrase = rng.choice(MUL[step.operand]).format(obj=obj)
        sentences.append(f"Then {name} {phrase}.")
        new = step.apply(value)
        equations.append(f"<<{value}{step.op}{step.operand}={new}>>")
        values.append(float(new))
        value = new
    sentences.append(f"How many {obj} does {name} have?")
    return Problem(
        id=pid,
        question=" ".join(sentences),
        answer=float(value),
        steps=len(steps),
        difficulty=difficulty_bin(len(steps)),
        intermediates=tuple(values),
        cot=" ".join(equations),
    )


def _stream(seed: int, prefix: str) -> Iterator[Problem]:
    rng = random.Random(seed)
    index = 0
    while True:
        n_steps = STEP_COUNTS[index % len(STEP_COUNTS)]
        start, steps, name, obj = generate_problem(rng, n_steps)
        yield render(start, steps, name, obj, rng, f"organism-{prefix}-{index}")
        index += 1


def make_splits(
    n_train: int, n_eval_per_bin: int, seed: int = 0
) -> tuple[list[Problem], list[Problem]]:
    """Train and eval problems, balanced over 2-5 steps; no question appears in both."""
    evals: list[Problem] = []
    seen: set[str] = set()
    per_bin = dict.fromkeys(STEP_COUNTS, 0)
    for problem in _stream(seed + 1_000_003, "eval"):
        if problem.question in seen or per_bin[problem.steps] >= n_eval_per_bin:
            if all(v >= n_eval_per_bin for v in per_bin.values()):
                break
            continue
        seen.add(problem.question)
        per_bin[problem.steps] += 1
        evals.append(problem)
    train: list[Problem] = []
    for problem in _stream(seed, "train"):
        if len(train) >= n_train:
            break
        if problem.question not in seen:
            train.append(problem)
    evals.sort(key=lambda p: (p.steps, int(p.id.rsplit("-", 1)[1])))
    return train, evals
