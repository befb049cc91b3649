"""The math reward: math-verify's verdicts on real answers, and 0.0 (fast, never an exception) on garbage."""

from __future__ import annotations

import importlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from tasks.dataset import load_questions
from tasks.math.reward import TAIL_CHARS, is_correct, reward

DATA_DIR = Path(os.environ.get("E3_DATA_DIR", Path(__file__).resolve().parents[2].parent / "shared/datasets/e3"))
THINKING = "Let me work through this carefully.\n</think>\nSo the final answer is "
EARLY_GUESS = r"At first I guessed \boxed{3}. " + "Checking it against the conditions shows it fails. " * 3 + "So "


def shared_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        pytest.skip(f"shared dataset {path} not present")
    return path


@pytest.mark.parametrize(
    ("completion", "ground_truth", "expected"),
    [
        (THINKING + r"\boxed{204}", "204", 1.0),
        (THINKING + r"\boxed{205}", "204", 0.0),
        (THINKING + r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        (THINKING + r"\boxed{\dfrac{1}{2}}", "0.5", 1.0),
        (THINKING + r"\boxed{25}", "025", 1.0),  # AIME-style zero padding
        (THINKING + r"\boxed{8178}", "8178.0", 1.0),
        (THINKING + r"\boxed{90}", r"90^\circ", 1.0),
        (THINKING + r"\boxed{40}", r"40 \text{ inches}", 1.0),
        (THINKING + r"\boxed{2016532}", "2{,}016{,}532", 1.0),
        (THINKING + r"\boxed{(6,3),(9,3),(9,5),(54,5)}", "$(6,3),(9,3),(9,5),(54,5)$", 1.0),
        (THINKING + r"\boxed{(6,3),(9,3)}", "$(6,3),(9,3),(9,5),(54,5)$", 0.0),
        (THINKING + r"\boxed{-1+i}", "-1 + i", 1.0),
        (THINKING + r"\boxed{f(n)=n}", r"\[\boxed{f(n)=n}\]", 1.0),  # ground truth already boxed
        # The last box wins: an earlier guess does not count...
        (EARLY_GUESS + r"\boxed{4}.", "4", 1.0),
        (EARLY_GUESS + r"\boxed{4}.", "3", 0.0),
        # ...but math-verify reads boxes joined by a short connective as one set answer.
        (r"The solutions are \boxed{3} and \boxed{4}.", "3, 4", 1.0),
        (r"The solutions are \boxed{3} and \boxed{4}.", "4", 0.0),
    ],
)
def test_reward_on_answers(completion: str, ground_truth: str, expected: float) -> None:
    assert reward(completion, ground_truth) == expected
    assert is_correct(completion, ground_truth) is (expected == 1.0)


@pytest.mark.parametrize(
    "completion",
    [
        "",
        r"\boxed{",
        r"}}}{{{\boxed{}",
        "\x00\xff\ufffd" * 100,
        r"\frac{\frac{\frac{",
        "no answer here at all",
    ],
)
def test_garbage_scores_zero(completion: str) -> None:
    assert reward(completion, "17") == 0.0


def test_bad_types_score_zero_instead_of_raising() -> None:
    assert reward(None, "17") == 0.0  # type: ignore[arg-type]
    assert reward(r"\boxed{17}", None) == 0.0  # type: ignore[arg-type]


def test_megabyte_inputs_are_fast() -> None:
    rng = random.Random(0)
    noise = "".join(rng.choice("abc xyz 0123456789+-=^{}()\\$") for _ in range(1_000_000))
    start = time.perf_counter()
    assert reward(noise, "17") == 0.0
    assert reward(noise + r" so the answer is \boxed{17}", "17") == 1.0
    # Only the tail is read: an answer followed by a megabyte of text is not found.
    assert reward(r"\boxed{17}" + "x" * 1_000_000, "17") == 0.0
    assert reward(r"\boxed{17}" + "x" * (TAIL_CHARS - 20), "17") == 1.0
    assert time.perf_counter() - start < 5.0


def test_works_outside_the_main_thread() -> None:
    # math-verify's signal-based timeouts raise in other threads; the reward disables them there.
    results: list[float] = []
    worker = threading.Thread(target=lambda: results.extend([reward(r"\boxed{0.5}", r"\frac12"), reward("1", "2")]))
    worker.start()
    worker.join(timeout=30)
    assert results == [1.0, 0.0]


def test_importable_by_reference_string() -> None:
    module_name, function_name = "tasks.math.reward:reward".split(":")
    assert getattr(importlib.import_module(module_name), function_name) is reward


@pytest.mark.parametrize("name", ["train_data.parquet", "valid_data.parquet", "test.json"])
def test_real_ground_truths_score_themselves(name: str) -> None:
    questions = load_questions(shared_file(name), empty_answer="drop")
    for q in random.Random(1).sample(questions, 25):
        assert reward(THINKING + r"\boxed{" + q.ground_truth + "}", q.ground_truth) == 1.0, q
        if q.ground_truth.isdigit():
            wrong = str(int(q.ground_truth) + 1)
            assert reward(THINKING + r"\boxed{" + wrong + "}", q.ground_truth) == 0.0, q
