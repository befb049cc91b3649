"""Correctness is not reward: with a partial-credit reward function (0.8 for a right but verbose answer, 0.5 for
a near miss, 1.2 for a right answer with a bonus), the real scheduler's difficulty table and accuracies, greedy
held-out accuracy and pass@k count correct answers, not rewards >= 1.

The real `Scheduler` and the real `RewardScorer` (its pebble worker processes); the rollout pool and the learner
are scripted stand-ins, because the point is to choose every completion's text (a policy's would be random)."""

from __future__ import annotations

import pytest

from actors.reward_scorer import RewardScorer
from actors.scheduler import Scheduler
from actors.settings import SchedulerSettings
from core.config import BudgetConfig, RewardConfig, TemperatureConfig
from core.messages import Completion, LearnerResult, Rollout, RolloutRequest, TemperatureUpdate, TrainBatch
from tasks.dataset import ChatMessage, Question
from tasks.prepare import Split
from tests.support.partial_credit import EXACT, VERBOSE

GROUND_TRUTHS = {"q0": "7", "q1": "12", "q2": "30"}
SOURCES = {"q0": "mix/a", "q1": "mix/a", "q2": "other"}
SCRIPTS = {  # the completions of each question, in sample order (4 samples a question)
    "q0": [EXACT.format(7), VERBOSE.format(7), EXACT.format(8), "no idea"],  # rewards 1.2 0.8 0.5 0: 2 right
    "q1": [EXACT.format(13), EXACT.format(11), EXACT.format(13), EXACT.format(11)],  # 0.5 x 4: none right
    "q2": [VERBOSE.format(30)] * 4,  # 0.8 x 4: all right, though no reward reaches 1
}
PROMPTS = {qid: [10 + i, 3] for i, qid in enumerate(SCRIPTS)}


class ScriptedRollouts:
    """Stands in for the rollout pool: sample j of a question is `SCRIPTS[question][j]`; greedy is sample 0."""

    def __init__(self) -> None:
        self.temperature = 1.0
        self.weights_version = 0

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        """One rollout per request, its completions from the script."""
        return [
            Rollout(
                r.question_id,
                r.step,
                r.prompt_token_ids,
                tuple(completion(SCRIPTS[r.question_id][j % 4]) for j in range(r.num_samples)),
                temperature=self.temperature,
                weights_version=self.weights_version,
            )
            for r in requests
        ]

    def generate_greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]:
        """The first scripted completion of the question each prompt belongs to."""
        by_prompt = {tuple(p): qid for qid, p in PROMPTS.items()}
        return [completion(SCRIPTS[by_prompt[tuple(p)]][0]) for p in prompts]

    def sync_weights(self, source: object, version: int) -> None:
        """Record the version."""
        self.weights_version = version

    def set_temperature(self, update: TemperatureUpdate) -> None:
        """Record the temperature."""
        self.temperature = update.temperature


class ConstantLearner:
    """Stands in for the learner group: every step bumps the weights version and reports entropy 1."""

    def train(self, batch: TrainBatch, weights_version: int) -> LearnerResult:
        """A step that learns nothing."""
        return LearnerResult(weights_version + 1, entropy=1.0, metrics={})


def completion(text: str) -> Completion:
    return Completion((5, 6), (-0.5, -0.25), text, "stop")


@pytest.fixture(scope="module")
def scorer():
    s = RewardScorer("tests.support.partial_credit:partial_credit", RewardConfig(num_workers=2))
    yield s
    s.close()


def test_table_accuracy_and_evaluation_count_correct_answers_not_rewards(scorer):
    questions = [
        Question(qid, (ChatMessage("user", f"question {qid}"),), truth, SOURCES[qid])
        for qid, truth in GROUND_TRUTHS.items()
    ]
    prompts = [PROMPTS[q.id] for q in questions]
    settings = SchedulerSettings(
        questions_per_step=3, total_steps=1, max_new_tokens=8, seed=0, pad_token_id=0, vocab_size=100,
        heldout_samples=4, eval_temperature=1.0,
    )  # fmt: skip
    split = Split(questions, prompts)
    scheduler = Scheduler(
        train=split,
        settings=settings,
        budget=BudgetConfig(n=4, n_low=4, n_high=4),
        temperature=TemperatureConfig(),
        reward=RewardConfig(),
        rollout_pool=ScriptedRollouts(),
        learner_group=ConstantLearner(),
        scorer=scorer,
        heldout=split,
    )
    record = scheduler.step()

    assert record.rollouts_per_question == (4, 4, 4)
    rows = {row["question_id"]: row for row in scheduler.table.to_rows()}
    assert {qid: (row["attempts"], row["correct"]) for qid, row in rows.items()} == {
        "q0": (4, 2),
        "q1": (4, 0),
        "q2": (4, 4),
    }  # counted by `reward >= 1.0` it would be 1, 0 and 0
    assert record.accuracy == pytest.approx(6 / 12)
    assert record.all_wrong_fraction == pytest.approx(1 / 3)  # q1
    assert record.all_correct_fraction == pytest.approx(1 / 3)  # q2
    assert record.reward_mean == pytest.approx((1.2 + 0.8 + 0.5 + 0.0 + 4 * 0.5 + 4 * 0.8) / 12)
    # after the epoch the ranks follow accuracy: q2 (all right) is the easiest, q1 (none right) the hardest
    assert rows["q2"]["rank"] < rows["q0"]["rank"] < rows["q1"]["rank"]

    result = scheduler.evaluate()
    # greedy answers: q0 exact (1.2, right), q1 near miss (0.5, wrong), q2 verbose (0.8, right)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["accuracy/mix/a"] == pytest.approx(1 / 2) and result["accuracy/other"] == pytest.approx(1.0)
    # 4 sampled answers a question: 2, 0 and 4 right
    assert result["sampled/all/pass@1"] == pytest.approx((2 / 4 + 0 + 1) / 3)
    assert result["sampled/all/pass@4"] == pytest.approx(2 / 3)
    assert result["sampled/other/pass@1"] == pytest.approx(1.0)
