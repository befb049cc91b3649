"""The countdown verifier: it parses the expression itself, checks the multiset of numbers, computes exactly, and
says wrong (never raises) on malformed or hostile output."""

import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.messages import RewardResult
from tasks.countdown.expression import (
    MAX_DEPTH,
    Node,
    ParseError,
    canonical_key,
    evaluate,
    leaves,
    parse,
    render,
)
from tasks.countdown.reward import answer_key, extract_expression, is_correct, parse_ground_truth, reward

TRUTH = "3 5 7 8 -> 24"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("8-7=1\n5-1=4\nAnswer: (3*(8-7))*8", False),  # 8 twice, 5 missing
        ("Answer: (3*7)-(5-8)", True),
        ("Answer: 3*7-(5-8)", True),  # precedence, not parentheses everywhere
        ("Answer: 3 * 7 - ( 5 - 8 )  ", True),
        ("Answer: (5*7)-(3+8)<|im_end|>", True),
        ("Answer: (5*7)-(3+8) <|im_end|>\n<|endoftext|>", True),
        ("Answer: 1\nAnswer: (5*7)-(3+8)", True),  # the last answer counts
        ("Answer: (5*7)-(3+8)\nAnswer: 1", False),
        ("Answer: 5*7-3+8", False),  # = 40
        ("Answer: (5*7)-(3+8)=24", False),  # not an expression
        ("Answer: (5*7)-(3+8) done", False),  # text after the answer
        ("(5*7)-(3+8)", False),  # no answer line
        ("Answer: (5*7)-(3+8", False),  # unbalanced
        ("Answer: (5*7)-(3+8))", False),
        ("Answer: -(3+8)+5*7", False),  # no unary minus
        ("Answer: (5*7)-(3+8)+0", False),  # a foreign number
        ("Answer: (5*7)-(3+8)*1", False),
        ("Answer: 5*7-3-8+(8-8)", False),  # a number twice
        ("Answer: 35-11", False),  # the sources are not used
        ("Answer: 5×7-(3+8)", False),  # non-ASCII operator
        ("Answer: 5**7", False),
        ("Answer: ", False),
        ("", False),
        (None, False),
        (42, False),
    ],
)
def test_verdicts(completion, expected: bool) -> None:
    assert is_correct(completion, TRUTH) is expected
    assert reward(completion, TRUTH) == RewardResult(1.0 if expected else 0.0, expected)


def test_exact_fractions_and_division_by_zero() -> None:
    # 6 / (1 - 3/4) = 24 needs exact fractions (floats give 23.999...)
    assert is_correct("Answer: 6/(1-(3/4))", "1 3 4 6 -> 24")
    assert evaluate(parse("6/(1-3/4)")) == 24
    assert evaluate(parse("1/3+1/3+1/3")) == 1  # 0.333... * 3 is not 1 in floats, is here
    assert not is_correct("Answer: 8/(3-3)+5", "3 3 5 8 -> 5")  # division by zero is wrong, not an error
    assert evaluate(parse("8/(3-3)")) is None


@pytest.mark.parametrize("bad", ["3 5 7 -> ", "-> 24", "3,5 -> 24", "3 5 7 8 = 24", "", None])
def test_a_malformed_ground_truth_is_a_data_bug(bad) -> None:
    with pytest.raises(ValueError, match="countdown ground_truth"):
        is_correct("Answer: 1", bad)


def test_ground_truth_round_trip() -> None:
    assert parse_ground_truth(" 3 5 7 8 -> 24 ") == ((3, 5, 7, 8), 24)


def test_hostile_inputs_are_wrong_and_fast() -> None:
    start = time.perf_counter()
    assert not is_correct("Answer: " + "(" * 10_000 + "3" + ")" * 10_000, TRUTH)
    assert not is_correct("Answer: " + "(" * (MAX_DEPTH + 2) + "3+5+7+8" + ")" * (MAX_DEPTH + 2), "3 5 7 8 -> 23")
    assert is_correct("x" * 10**6 + "Answer: 3*7-(5-8)", TRUTH)  # only the tail is read
    assert not is_correct("Answer: 3*7-(5-8)" + " " * 10**6, TRUTH)  # ... so an answer before 1 MB of blanks is lost
    assert not is_correct("Answer: 99999999999*3", TRUTH)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(ParseError):
        parse("(" * (MAX_DEPTH + 2) + "1" + ")" * (MAX_DEPTH + 2))


def test_extract_expression_returns_the_tree() -> None:
    assert extract_expression("1+2=3\nAnswer: (1+2)*3") == Node("*", Node("+", 1, 2), 3)
    assert extract_expression("no answer") is None


@st.composite
def trees(draw, depth: int = 3):
    """Random expression trees over small numbers."""
    if depth == 0 or draw(st.booleans()):
        return draw(st.integers(1, 20))
    return Node(draw(st.sampled_from("+-*/")), draw(trees(depth=depth - 1)), draw(trees(depth=depth - 1)))


def reference_value(tree) -> Fraction | None:
    """The value by Python's own Fraction arithmetic on the rendered text (a test oracle only)."""
    try:
        return eval(render(tree).replace("/", "*Fraction(1)/"), {"Fraction": Fraction})  # noqa: S307
    except ZeroDivisionError:
        return None


@settings(max_examples=300, deadline=None)
@given(trees())
def test_parse_render_round_trip_and_exact_value(tree) -> None:
    assert parse(render(tree)) == tree
    wrapped = Fraction(tree) if isinstance(tree, int) else None
    assert evaluate(tree) == (wrapped if wrapped is not None else reference_value(tree))
    value = evaluate(tree)
    if value is not None and value.denominator == 1 and value >= 0:  # then the tree solves its own puzzle
        truth = f"{' '.join(map(str, reversed(leaves(tree))))} -> {value.numerator}"
        assert is_correct(f"Answer: {render(tree)}", truth)
        assert not is_correct(f"Answer: {render(tree)}", f"{' '.join(map(str, leaves(tree)))} 1 -> {value.numerator}")


def test_canonical_key_ignores_order_and_grouping_only() -> None:
    same = ["3+(5+7)", "(7+3)+5", "5+7+3"]
    assert len({canonical_key(parse(text)) for text in same}) == 1
    assert canonical_key(parse("8-3+2")) == canonical_key(parse("8+2-3"))
    assert canonical_key(parse("(2*3)*4")) == canonical_key(parse("4*(3*2)"))
    assert canonical_key(parse("8/2*3")) == canonical_key(parse("3*8/2"))
    assert canonical_key(parse("8-(3+2)")) == canonical_key(parse("8-3-2"))
    assert canonical_key(parse("8-3")) != canonical_key(parse("3-8"))
    assert canonical_key(parse("(8-3)*2")) != canonical_key(parse("8*2-3*2"))  # no distributing


def test_answer_keys_tell_distinct_solutions_apart_and_are_none_without_an_answer() -> None:
    same = ["8-7=1\nAnswer: (8-7+5)*3", "Answer: 3*(5+(8-7))", "Answer: (5-7+8)*3"]
    assert len({answer_key(text) for text in same}) == 1  # order and grouping within a sum or product
    assert answer_key("Answer: (8-7)*(5*3)") != answer_key(same[0])
    assert answer_key("no answer here") is None and answer_key("Answer: (8-") is None
