"""The question-token role tagger (RQ6 routing): operands of step k, numbers, names, words."""

from __future__ import annotations

from codi_fixtures.study.roles import (
    NAME,
    NUMBER,
    OPERATION,
    OTHER,
    SPECIAL,
    chain_operands,
    tag_question,
    token_roles,
)


def _spans(question: str, cot: str) -> dict[str, tuple[int, frozenset[int]]]:
    roles = tag_question(question, cot)
    return {
        question[s:e]: (role, roles.operand_steps.get(i, frozenset()))
        for i, (s, e, role) in enumerate(roles.spans)
    }


def test_organism_question_operands_follow_the_chain():
    """Start and step-1 operand read by step 1; x2 has no number; a carried result is not read."""
    q = "Ben has 9 eggs. Then Ben loses 2. Then Ben doubles the eggs. Then Ben gets 7 more."
    tags = _spans(q, "<<9-2=7>> <<7*2=14>> <<14+7=21>>")
    assert tags["9"] == (NUMBER, frozenset({1}))
    assert tags["2"] == (NUMBER, frozenset({1}))  # not step 2's x2: a number is read once
    assert tags["7"] == (NUMBER, frozenset({3}))  # step 2's 7 is the carried result
    assert tags["loses"][0] == tags["doubles"][0] == tags["more"][0] == OPERATION
    assert tags["Ben"][0] == NAME
    roles = tag_question(q, "<<9-2=7>> <<7*2=14>> <<14+7=21>>")
    assert roles.n_steps == 3 and roles.unmatched == [(2, 2.0)]


def test_a_value_twice_in_one_step_is_one_carried_and_one_read():
    """``<<8+8=16>>`` after a step that gave 8: one 8 is carried, the other is the question's."""
    tags = _spans(
        "Ana has 5 pens. Then Ana gets 3 more. Then Ana gets 8 more.", "<<5+3=8>> <<8+8=16>>"
    )
    assert tags["8"] == (NUMBER, frozenset({2}))


def test_gsm8k_style_chain_and_no_chain():
    """GSM8K annotations give operands; without a chain every number is just a number."""
    q = "Natalia sold clips to 48 of her friends in April, and then she sold half as many."
    assert chain_operands("<<48/2=24>> <<48+24=72>>") == [([48.0, 2.0], 24.0), ([48.0, 24.0], 72.0)]
    tags = _spans(q, "<<48/2=24>> <<48+24=72>>")
    assert tags["48"] == (NUMBER, frozenset({1}))
    assert tags["April"][0] == NAME and tags["her"][0] == NAME and tags["half"][0] == OPERATION
    bare = tag_question(q)
    assert bare.n_steps == 0 and not bare.operand_steps


def test_token_roles_from_offsets():
    """Specials, shared roles of a number's digits, no name tag for a sentence-initial word."""
    q = "Leo has 12 cards."
    roles = tag_question(q, "<<12+1=13>>")
    offsets = [None, (0, 3), (3, 7), (7, 9), (9, 10), (10, 16), (16, 17)]
    codes, masks = token_roles(q, roles, offsets)
    assert codes == [SPECIAL, OTHER, OTHER, NUMBER, NUMBER, OTHER, OTHER]
    assert masks == [0, 0, 0, 1, 1, 0, 0]
