"""Question tokens tagged by role, from the question text and its ground-truth chain (RQ6).

Roles (:data:`ROLES`, codes 0..4): ``other`` words and punctuation, ``number`` (digits of a
number written in the question), ``operation`` (a word of :data:`OPERATION_WORDS`),
``name`` (a capitalised word that is not the sentence's first word, or a word listed in
:data:`SUBJECT_WORDS`; the organism's names always follow ``Then``), and ``special``
(BOS / eos, tokens outside the text). A number is an *operand of step k* when the chain's
k-th equation ``<<a op b=c>>`` reads it from the question (bit ``k-1`` of the operand mask):

- one operand per step that equals an earlier step's result (the previous one's, if any) is
  that result carried over, not read from the question;
- any other operand is matched to the first question number with that value not yet read by
  a step (a number is read once: in ``<<9-2=7>> <<7*2=14>>`` the ``2`` of ``doubles`` is not
  the question's ``2``);
- an operand no unread question number matches (``doubles`` = x2, a percentage written as
  ``.5``, a number read twice) is listed in :attr:`QuestionRoles.unmatched`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "OPERATION_WORDS",
    "ROLES",
    "SUBJECT_WORDS",
    "QuestionRoles",
    "chain_operands",
    "tag_question",
    "token_roles",
]

ROLES = ("other", "number", "operation", "name", "special")
OTHER, NUMBER, OPERATION, NAME, SPECIAL = range(5)

OPERATION_WORDS = frozenset(
    # the organism's generator (codi_fixtures/organism/task.py ADD / SUB / MUL) ...
    "gets finds buys wins more gives away loses sells uses doubles triples "
    # ... the SmolLM2 organism's phrasing, and common GSM8K operation words
    "doubles halves twice half times each per total left remaining less fewer plus minus "
    "add adds added subtract takes took spends spent pays paid costs earns earned eats ate "
    "gave lost sold bought found won used received shares split divides divided multiplied "
    "increases decreases doubled tripled quadruples percent".split()
)
"""Words that name an arithmetic operation (lower-cased; the first list is the organism's)."""

SUBJECT_WORDS = frozenset("he she they him her his hers their them".split())
"""Pronouns that stand for the problem's subject (tagged ``name``)."""

_NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?|(?<![\w\d])\.\d+")
_WORD = re.compile(r"[A-Za-z]+")
_EQUATION = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
_OPERAND = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+")
_SENTENCE_END = re.compile(r"[.!?]\s*$")


def _value(text: str) -> float:
    return float(text.replace(",", ""))


def chain_operands(cot: str) -> list[tuple[list[float], float]]:
    """``(operands, result)`` of each ``<<expr=result>>`` equation in ``cot``, in order.

    An equation whose result does not parse ends the chain (later steps would misalign).
    """
    steps = []
    for expr, result in _EQUATION.findall(cot):
        try:
            value = _value(result.strip())
        except ValueError:
            break
        steps.append(([_value(x) for x in _OPERAND.findall(expr)], value))
    return steps


@dataclass(frozen=True)
class QuestionRoles:
    """Character spans of a question with their role; numbers with the steps that read them."""

    spans: list[tuple[int, int, int]]  # (start, end, role code), non-overlapping, in order
    operand_steps: dict[int, frozenset[int]]  # span index -> 1-based steps that read it
    n_steps: int  # equations parsed from the chain (0: no step information)
    unmatched: list[tuple[int, float]] = field(default_factory=list)  # (step, operand value)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _carried(operands: Sequence[float], results: Sequence[float]) -> int | None:
    """Index of the one operand that is an earlier result: the last result if present."""
    for candidates in (results[-1:], results):
        for position, value in enumerate(operands):
            if any(_close(value, r) for r in candidates):
                return position
    return None


def _match_operands(
    numbers: Sequence[float], chain: Sequence[tuple[list[float], float]]
) -> tuple[dict[int, set[int]], list[tuple[int, float]]]:
    """Question-number index -> steps reading it; operands no number matches."""
    reads: dict[int, set[int]] = {}
    unmatched: list[tuple[int, float]] = []
    used: set[int] = set()
    results: list[float] = []
    for step, (operands, result) in enumerate(chain, start=1):
        carried = _carried(operands, results)
        for position, value in enumerate(operands):
            if position == carried:
                continue
            fresh = [i for i, n in enumerate(numbers) if _close(n, value) and i not in used]
            if not fresh:
                unmatched.append((step, value))
                continue
            index = fresh[0]
            used.add(index)
            reads.setdefault(index, set()).add(step)
        results.append(result)
    return reads, unmatched


def tag_question(question: str, cot: str = "") -> QuestionRoles:
    """Role spans of ``question``; operands of each step of the chain in ``cot``."""
    found: list[tuple[int, int, int]] = []
    numbers: list[float] = []
    number_spans: list[int] = []
    for match in _NUMBER.finditer(question):
        number_spans.append(len(found))
        numbers.append(_value(match.group()))
        found.append((match.start(), match.end(), NUMBER))
    for match in _WORD.finditer(question):
        if any(s <= match.start() < e for s, e, _ in found):
            continue
        word = match.group()
        before = question[: match.start()]
        first = not before.strip() or bool(_SENTENCE_END.search(before))
        if word.lower() in OPERATION_WORDS:
            role = OPERATION
        elif word.lower() in SUBJECT_WORDS or (word[0].isupper() and not first):
            role = NAME
        else:
            continue
        found.append((match.start(), match.end(), role))
    order = sorted(range(len(found)), key=lambda i: found[i][0])
    spans = [found[i] for i in order]
    position = {old: new for new, old in enumerate(order)}
    chain = chain_operands(cot)
    reads, unmatched = _match_operands(numbers, chain)
    operand_steps = {position[number_spans[i]]: frozenset(steps) for i, steps in reads.items()}
    return QuestionRoles(spans, operand_steps, len(chain), unmatched)


def _subject_names(question: str, spans: Sequence[tuple[int, int, int]]) -> set[str]:
    """Capitalised words that also appear as a tagged name (a sentence-initial subject)."""
    return {question[s:e] for s, e, role in spans if role == NAME}


def token_roles(
    question: str, roles: QuestionRoles, offsets: Sequence[tuple[int, int] | None]
) -> tuple[list[int], list[int]]:
    """Per token: (role code, operand bit mask) from character ``offsets`` (None = special).

    A token takes the role of the span it overlaps (the first such span); a sentence-initial
    word equal to a tagged name is a name too. Bit ``k-1`` of the mask: the token is part of a
    number that step ``k`` reads.
    """
    names = _subject_names(question, roles.spans)
    codes, masks = [], []
    for offset in offsets:
        if offset is None or offset[1] <= offset[0]:
            codes.append(SPECIAL)
            masks.append(0)
            continue
        start, end = offset
        code, mask = OTHER, 0
        for index, (s, e, role) in enumerate(roles.spans):
            if s < end and start < e:
                code = role
                for step in roles.operand_steps.get(index, ()):
                    mask |= 1 << (step - 1)
                break
        if code == OTHER and question[start:end].strip() in names:
            code = NAME
        codes.append(code)
        masks.append(mask)
    return codes, masks
