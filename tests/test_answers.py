"""Parsing generated answers into numbers, and formatting gold answers as the model writes them."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codi_fixtures.answers import format_number, numbers_equal, parse_answer

PROMPT = "The answer is:"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is: 18", 18.0),
        ("The answer is: 18</s>", 18.0),
        ("The answer is: 18. Then 5 more", 18.0),  # the number right after the prompt wins
        ("3 + 4 = 7", 7.0),  # no prompt: the last number
        ("<<3+4=7>> <<7*2=14>> The answer is:", 14.0),  # prompt with nothing after it
        ("The answer is: 1,234", 1234.0),
        ("The answer is: 1,234,567.5", 1234567.5),
        ("The answer is: -5", -5.0),
        ("The answer is: -2.75", -2.75),
        ("The answer is: .5", 0.5),
        ("The answer is: 3. The answer is: 9", 9.0),  # the last prompt counts
        ("about 12 or 13", 13.0),
        ("no number here", None),
        ("", None),
        ("The answer is: none", None),
    ],
)
def test_parse_answer(text: str, expected: float | None) -> None:
    assert parse_answer(text) == expected


def test_parse_answer_with_another_prompt() -> None:
    assert parse_answer("#### 42 and then 7", prompt="####") == 42.0
    assert parse_answer("#### 42 and then 7", prompt="") == 7.0


@pytest.mark.parametrize(
    ("value", "text"),
    [(18.0, "18"), (-3.0, "-3"), (2.5, "2.5"), (0.0, "0"), (1234.0, "1234"), (5e-05, "0.00005")],
)
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_format_number_refuses_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        format_number(value)


SUFFIXES = st.sampled_from(["", "</s>", ".", " apples.", "\n", " and that is all"])


@given(value=st.integers(-(10**15), 10**15), suffix=SUFFIXES)
def test_integers_round_trip(value: int, suffix: str) -> None:
    text = f"{PROMPT} {format_number(float(value))}{suffix}"
    assert parse_answer(text) == value


@given(
    value=st.decimals(
        min_value=-(10**6), max_value=10**6, places=4, allow_nan=False, allow_infinity=False
    ),
    suffix=SUFFIXES,
)
def test_decimals_round_trip(value: Decimal, suffix: str) -> None:
    number = float(value)
    assert parse_answer(f"{PROMPT} {format_number(number)}{suffix}") == number


@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_float_round_trips(value: float) -> None:
    """No exponent notation: 5e-05 is written 0.00005, which parses back exactly."""
    text = format_number(value)
    assert "e" not in text.lower()
    assert parse_answer(f"{PROMPT} {text}") == value


@given(
    numbers=st.lists(st.integers(0, 10**6), min_size=1, max_size=6),
    words=st.sampled_from(["apples", "so", "then", "="]),
)
def test_fallback_is_the_last_number(numbers: list[int], words: str) -> None:
    text = f" {words} ".join(str(n) for n in numbers)
    assert parse_answer(text) == numbers[-1]


def test_numbers_equal() -> None:
    assert numbers_equal(18.0, 18)
    assert numbers_equal(18.0000001, 18)
    assert not numbers_equal(18.01, 18)
    assert not numbers_equal(None, 18)
    assert numbers_equal(18.01, 18, tol=0.1)
    assert numbers_equal(-0.0, 0)
