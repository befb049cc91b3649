"""Math reward: 1.0 when math-verify finds the completion's final answer equal to the ground truth, else 0.0.

Referenced by the reward scorer as "tasks.math.reward:reward" (and "tasks.math.reward:is_correct").

* Answer: the last `\\boxed{...}` of the completion when there is one (boxed matches get the highest
  priority, and math-verify tries matches from the right; it reads boxes joined only by a short connective,
  as in `\\boxed{3} and \\boxed{4}`, as one set answer); otherwise math-verify's own anchors ("final answer
  is ...") and, failing those, the last LaTeX or plain expression.
* Ground truth: parsed as `\\boxed{ground_truth}` unless it already contains a `\\boxed`, as the E3 reference
  does. Parsed ground truths are cached, since every completion of a question shares one.
* Bounded work: only the last `TAIL_CHARS` characters of a completion are parsed, so a huge or looping
  completion costs the same as a normal one.
* Timeouts: math-verify bounds parsing and comparison with `signal.alarm`, which only works in a process's
  main thread and raises elsewhere. We pass `SIGNAL_TIMEOUT_S` when called in the main thread (the usual case:
  a process-pool worker, the driver, a test) and disable math-verify's timeouts in any other thread, where the
  caller's per-item timeout is the only bound. Consequence for callers: do not use SIGALRM for your own
  timeouts around these functions (math-verify cancels pending alarms); enforce them from outside the
  worker (e.g. kill the worker process), which also covers a stuck call in a non-main thread.
* Never raises: any failure, including math-verify's `TimeoutException` (a `BaseException`), scores 0.0.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

log = logging.getLogger(__name__)

TAIL_CHARS = 4000
"""Only this many trailing characters of a completion are searched for the final answer."""

SIGNAL_TIMEOUT_S = 3
"""math-verify's per-parse and per-comparison time limit, in seconds, when running in the main thread."""

_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


def reward(completion: str, ground_truth: str) -> float:
    """1.0 if the completion's final answer equals the ground truth (as math-verify decides), else 0.0.

    Never raises; malformed, empty, huge or unparsable inputs score 0.0.
    """
    return 1.0 if is_correct(completion, ground_truth) else 0.0


def is_correct(completion: str, ground_truth: str) -> bool:
    """Whether the completion's final answer equals the ground truth, as math-verify decides; never raises."""
    try:
        timeout_s = _signal_timeout_s()
        gold = _parse_gold(ground_truth, timeout_s)
        if not gold:
            return False
        answer = parse(completion[-TAIL_CHARS:], _EXTRACTION, parsing_timeout=timeout_s)
        return bool(answer) and verify(list(gold), answer, timeout_seconds=timeout_s)
    except (Exception, TimeoutException):
        log.debug("math reward failed; scoring 0", exc_info=True)
        return False


@lru_cache(maxsize=4096)
def _parse_gold(ground_truth: str, timeout_s: int | None) -> tuple[object, ...]:
    """The parsed ground truth; cached, as every sample of a question shares it.

    Raises on a parse error or timeout, so that a failure (perhaps only a slow moment) is not cached.
    """
    boxed = ground_truth if "\\boxed" in ground_truth else f"\\boxed{{{ground_truth}}}"
    return tuple(parse(boxed, _EXTRACTION, parsing_timeout=timeout_s, raise_on_error=True))


def _signal_timeout_s() -> int | None:
    """math-verify's signal-based time limit where signals work (the main thread), else None (no limit)."""
    return SIGNAL_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
