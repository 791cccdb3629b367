"""Parse a generated answer into a number, and format gold answers as the model writes them."""

from __future__ import annotations

import math
import re
from decimal import Decimal

__all__ = ["format_number", "numbers_equal", "parse_answer"]

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)


def _to_float(text: str) -> float | None:
    cleaned = text.replace(",", "")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_answer(text: str, prompt: str = "The answer is:") -> float | None:
    """The number after the last ``prompt`` if present, else the last number; None if none.

    Commas are thousands separators (``1,000`` -> 1000); negatives and decimals parse.
    """
    tail = text.rsplit(prompt, 1)[1] if prompt and prompt in text else None
    if tail is not None:
        match = _NUMBER_RE.search(tail)
        if match:
            return _to_float(match.group())
    numbers = _NUMBER_RE.findall(text)
    return _to_float(numbers[-1]) if numbers else None


def format_number(value: float) -> str:
    """Canonical text of a gold answer: ``18`` not ``18.0``; ``2.5`` stays ``2.5``.

    Never exponent notation (``5e-05`` is ``0.00005``): no model writes it, and
    :func:`parse_answer` would read it as 5.
    """
    if not math.isfinite(value):
        raise ValueError(f"cannot format non-finite answer {value}")
    if float(value).is_integer():
        return str(int(value))
    # repr is the shortest text that round-trips; Decimal writes it out positionally.
    return format(Decimal(repr(float(value))), "f")


def numbers_equal(pred: float | None, gold: float, tol: float = 1e-6) -> bool:
    """True when a parsed prediction equals the gold answer (absolute tolerance)."""
    return pred is not None and abs(pred - gold) <= tol
