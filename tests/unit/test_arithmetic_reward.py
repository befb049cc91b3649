"""The arithmetic reward: final-answer exact match, never raising on malformed or hostile completions."""

import time

import pytest

from tasks.arithmetic.reward import MAX_TAIL_CHARS, extract_answer, is_correct, reward


@pytest.mark.parametrize(
    ("completion", "truth", "expected"),
    [
        ("5+7=12\n8+4+1=13\nAnswer: 132", "132", 1.0),
        ("Answer: 132", "132", 1.0),
        ("Answer:132", "132", 1.0),
        ("  Answer: \t 132 \n\n", " 132 ", 1.0),
        ("Answer: 132<|im_end|>", "132", 1.0),
        ("Answer: 132 <|im_end|>\n<|endoftext|>", "132", 1.0),
        ("Answer: 0132", "132", 1.0),
        ("Answer: -5", "-5", 1.0),
        ("Answer: 131\nAnswer: 132", "132", 1.0),  # the last answer counts
        ("Answer: 132\nAnswer: 131", "132", 0.0),
        ("Answer: 133", "132", 0.0),
        ("5+7=12\n8+4+1=13\n132", "132", 0.0),  # no answer line
        ("Answer: 132 apples", "132", 0.0),  # text after the answer
        ("Answer: 132\nthe end", "132", 0.0),  # the answer is not final
        ("Answer: 1 32", "132", 0.0),
        ("Answer: 13.2", "132", 0.0),
        ("answer: 132", "132", 0.0),  # the prefix is case-sensitive
        ("Answer: ١٣٢", "132", 0.0),  # non-ASCII digits
        ("Answer: １３２", "132", 0.0),  # full-width digits
        ("Answer:", "132", 0.0),
        ("", "132", 0.0),
        ("Answer: 132\u00a0", "132", 1.0),  # unicode whitespace is still whitespace
        ("Answer: 132 🙂", "132", 0.0),
    ],
)
def test_reward_cases(completion: str, truth: str, expected: float) -> None:
    assert reward(completion, truth) == expected
    assert is_correct(completion, truth) is (expected == 1.0)


@pytest.mark.parametrize("completion", [None, 132, b"Answer: 132", ["Answer: 132"], object()])
def test_non_string_completion_scores_zero(completion: object) -> None:
    assert reward(completion, "132") == 0.0  # type: ignore[arg-type]


def test_huge_inputs_are_bounded_and_fast() -> None:
    hostile = [
        "1" * 10_000_000 + "\nAnswer: 132",
        "Answer: " * 2_000_000,
        "Answer: " + "9" * 5_000_000,
        "+" * 5_000_000 + "Answer: 132" + " " * 400,
        "<|im_end|>" * 1_000_000,
        "\U0001f642" * 3_000_000,
    ]
    start = time.perf_counter()
    scores = [reward(text, "132") for text in hostile]
    assert time.perf_counter() - start < 1.0
    assert scores == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_only_the_tail_window_is_read() -> None:
    assert extract_answer("Answer: 7" + " " * (MAX_TAIL_CHARS - 20)) == 7
    assert extract_answer("Answer: 7" + " " * MAX_TAIL_CHARS) is None


@pytest.mark.parametrize("truth", ["", "abc", "1.5", None, "١٣٢"])
def test_malformed_ground_truth_raises_naming_the_value(truth: object) -> None:
    with pytest.raises(ValueError, match="ground_truth"):
        reward("Answer: 1", truth)  # type: ignore[arg-type]
