"""The countdown error replay counts each kind of mistake in a search trace, and nothing in a right one."""

from collections import Counter

from bench.countdown_errors import replay_response

NUMBERS, TARGET = (3, 5, 8), 25


def counts_of(text: str) -> Counter:
    counts: Counter = Counter()
    replay_response(NUMBERS, TARGET, text, counts)
    return counts


def test_a_right_trace_has_no_error_and_its_hit_is_rendered_right():
    counts = counts_of("8*3=24,24+5=29 vs 25 no\n8-3=5,5*5=25 vs 25\nAnswer: (8-3)*5")
    assert counts["correct"] == 1 and counts["attempts"] == 2 and counts["steps"] == 4
    assert counts["clean_attempts"] == 2 and counts["clean_hits"] == 1
    assert counts["last_attempt_clean_hit"] == 1 and counts["render_wrong"] == 0
    mistakes = ("wrong_arith", "not_left", "malformed_step", "hit_said_no", "miss_claimed_hit", "target_copied_wrong")
    assert all(counts[name] == 0 for name in mistakes)
    # 24 and 5 make 29, 120 or 19 (24/5 is no integer): 29 is the nearest to 25
    assert counts["last_not_nearest"] == 0


def test_each_kind_of_mistake_is_counted():
    assert counts_of("8*3=23,23+5=28 vs 25 no\nAnswer: (8*3)+5")["wrong_arith"] == 1
    assert counts_of("8*8=64,64-5=59 vs 25 no\nAnswer: (8*8)-5")["not_left"] == 1
    assert counts_of("8-3=5,5*5=25 vs 25 no\nAnswer: (8-3)*5")["hit_said_no"] == 1
    assert counts_of("8+3=11,11+5=16 vs 25\nAnswer: (8+3)+5")["miss_claimed_hit"] == 1
    assert counts_of("8+3=11,11+5=16 vs 24 no\nAnswer: (8+3)+5")["target_copied_wrong"] == 1
    assert counts_of("8-3=5,5+5=10 vs 25 no\nAnswer: (8-3)+5")["last_not_nearest"] == 1  # 5*5 would reach 25
    rendered = counts_of("8-3=5,5*5=25 vs 25\nAnswer: (8+3)*5")
    assert rendered["last_attempt_clean_hit"] == 1 and rendered["render_wrong"] == 1 and rendered["correct"] == 0
    assert counts_of("eight times three\nAnswer: 24")["malformed_step"] == 1
