"""The problem record every source produces, and difficulty bins."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DIFFICULTY_BINS", "Problem", "difficulty_bin"]

DIFFICULTY_BINS = ("2-step", "3-step", "4-step", "5+step")


def difficulty_bin(steps: int) -> str:
    """2 -> '2-step', 3 -> '3-step', 4 -> '4-step', >= 5 -> '5+step'; < 2 is an error."""
    if steps < 2:
        raise ValueError(f"problems with {steps} reasoning step(s) have no difficulty bin")
    return DIFFICULTY_BINS[min(steps, 5) - 2]


@dataclass(frozen=True)
class Problem:
    """One question with its gold answer. Immutable: problem sets are shared by fixtures."""

    id: str
    """Stable identifier (``gsm8k-test-17``, ``organism-eval-3``, or the record's own)."""
    question: str
    """The question text fed to the model."""
    answer: float
    """Gold final answer."""
    steps: int
    """Number of reasoning steps (calculator annotations for GSM8K)."""
    difficulty: str
    """Difficulty bin, one of :data:`DIFFICULTY_BINS`."""
    intermediates: tuple[float, ...] = ()
    """Ground-truth intermediate values, when known (the synthetic task)."""
    cot: str = ""
    """Equation chain of thought, GSM8k-Aug style (``<<3+4=7>> <<7*2=14>>``)."""
