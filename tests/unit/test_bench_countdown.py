"""The countdown experiment's numbers, computed from run folders: per-run metrics, intervals, separations and
the saturation check."""

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.ablation import mean_ci95
from bench.countdown import (
    KS,
    TEMPERATURES,
    VARIANTS,
    countdown_metrics,
    level_subset,
    markdown,
    paired_separations,
    saturation_step,
    separations,
    summarize,
)
from core.config import AllocatorName
from launch import compose_run_config
from reporting.report import load_run
from tasks.countdown.policy_eval import MAX_NEW_TOKENS
from tests.support.records import step_record

LEVELS = ["L1", "L2", "L3"]


def fake_run(path, hard_pass64=0.2, coverage=(0.2, 0.4, 0.5, 0.6)):
    """A finished countdown run of four steps whose held-out pass@64 on the hardest levels is `hard_pass64`."""
    path.mkdir()
    records = [
        step_record(
            step,
            coverage=c,
            distinct_correct=1.0 + step,
            rollouts_per_question=(6, 2),
            learner={"entropy_top20": 0.5 + step},
            heldout={"accuracy": 0.1 * step} if step % 2 else {},
        )
        for step, c in enumerate(coverage)
    ]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r.to_log()) for r in records) + "\n")
    after = {"accuracy": 0.4, **{f"sampled/all/pass@{k}": 0.1 * k**0.5 for k in KS}}
    for t in TEMPERATURES:
        if t != 1.0:
            after[f"sampled_t{t:g}/all/pass@1"] = t / 10
    for i, level in enumerate(LEVELS):
        after[f"sampled/countdown/{level}/pass@1"] = 0.5 - 0.2 * i
        after[f"sampled/countdown/{level}/pass@64"] = 0.9 if i == 0 else hard_pass64
    summary = {"steps": 4, "heldout_before": {"accuracy": 0.0}, "heldout_after": after, "wall_s": 30.0}
    table = {"question_id": ["q0", "q1"], "correct": [0, 3]}  # q0 never solved; every step gives it 6 rollouts
    pq.write_table(pa.table(table), path / "difficulty.parquet")
    (path / "summary.json").write_text(json.dumps(summary))
    return load_run(path)


def test_a_runs_metrics_read_its_summary_and_its_records(tmp_path):
    metrics = countdown_metrics(fake_run(tmp_path / "run", hard_pass64=0.3), LEVELS)
    assert metrics["pass@64_two_hardest"] == pytest.approx(0.3)  # mean over L2 and L3
    assert metrics["pass@1_T0.6"] == pytest.approx(0.06) and metrics["pass@1_T1"] == metrics["pass@1"]
    assert metrics["coverage"] == 0.6  # the last step's
    assert metrics["distinct_correct_last_quarter"] == 4.0  # the last of four steps
    assert metrics["entropy_top20_last_quarter"] == 3.5
    assert metrics["pass@1/L3"] == pytest.approx(0.1) and metrics["pass@64/L1"] == 0.9
    assert metrics["rollouts_to_never_solved"] == 6.0  # q0's, not the mean over both questions
    (tmp_path / "run" / "difficulty.parquet").unlink()
    assert math.isnan(countdown_metrics(load_run(tmp_path / "run"), LEVELS)["rollouts_to_never_solved"])


def test_pairs_separate_only_when_their_intervals_do_not_overlap(tmp_path):
    low = [countdown_metrics(fake_run(tmp_path / f"low{i}", hard_pass64=0.1 + 0.01 * i), LEVELS) for i in range(3)]
    high = [countdown_metrics(fake_run(tmp_path / f"high{i}", hard_pass64=0.5 + 0.01 * i), LEVELS) for i in range(3)]
    variants = summarize({"grpo_n8": low, "e3_knapsack_n8": high})
    assert variants["grpo_n8"]["pass@64_two_hardest"]["per_seed"] == pytest.approx([0.1, 0.11, 0.12])
    lines = separations(variants, ["pass@64_two_hardest", "coverage"])
    assert lines == ["pass@64_two_hardest: E3 knapsack n=8 0.510 > GRPO n=8 0.110"]  # equal coverage: no line
    text = markdown(
        {
            "variants": variants, "levels": LEVELS, "separations": lines, "command": "python -m bench.countdown",
            "seeds": [0, 1, 2], "config": [], "machine": "cpu", "date": "today", "bench_wall_s": 60,
            "grpo_saturation": {"per_seed": [3.0, 3.0, 3.0], "steps": 4},
            "paired_separations": [{"metric": "coverage", "higher": "e3_knapsack_n8", "lower": "grpo_n8",
                                    "mean": 0.02, "ci95": [0.01, 0.03], "per_seed": [0.01, 0.02, 0.03]}],
        }
    )  # fmt: skip
    assert "E3 knapsack n=8 0.510 > GRPO n=8 0.110" in text and "| L3 pass@1 / pass@64" in text
    assert "- coverage: E3 knapsack n=8 - GRPO n=8 = +0.020 [+0.010, +0.030]" in text


def test_the_last_quarter_skips_steps_without_a_value():
    from bench.countdown import final

    assert final([9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 1.0, float("nan")]) == 1.0  # the last 2 of 8, the NaN left out
    assert math.isnan(final([1.0, float("nan")], share=0.5))


def test_saturation_is_the_first_step_with_ninety_percent_of_the_final_gain():
    assert saturation_step([[0, 0.2], [4, 0.5], [8, 0.62], [12, 0.6], [16, 0.64]]) == 8  # 0.42 >= 0.9 x 0.44
    assert saturation_step([[0, 0.5], [4, 0.4]]) is None


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_composes_on_the_countdown_task(name):
    from bench.countdown import EXPERIMENT_CONFIG

    cfg = compose_run_config([*EXPERIMENT_CONFIG, *VARIANTS[name]])
    assert cfg.data.task == "countdown" and cfg.eval.after_temperatures == [0.6, 1.3]
    assert (cfg.rollout.max_new_tokens, cfg.data.max_prompt_tokens) == (MAX_NEW_TOKENS, 64)  # the preset's lengths
    assert cfg.data.max_train_questions // cfg.train.questions_per_step == 16  # steps an epoch
    assert cfg.budget.n == int(name.rsplit("_n", 1)[1])
    if "knapsack" in name:
        assert cfg.budget.allocator == AllocatorName.knapsack
    if cfg.algo == "e3" and cfg.budget.allocator != AllocatorName.uniform:  # the allocator has room to move
        assert cfg.budget.n_low < cfg.budget.n < cfg.budget.n_high


def test_a_level_subset_keeps_those_levels_rows_in_order_and_ranks_them_afresh(tmp_path):
    import pyarrow.parquet as pq

    from tasks.countdown.generate import CountdownDataConfig, write_splits

    full = write_splits(CountdownDataConfig(seed=3, train_size=60, valid_size=12, test_size=0), tmp_path / "full")
    subset = level_subset(full["train"], [2, 4], tmp_path / "sub" / "train.parquet")
    rows, kept = pq.read_table(full["train"]).to_pylist(), pq.read_table(subset).to_pylist()
    expected = [row["id"] for row in rows if row["extra_info"]["level"] in (2, 4)]
    assert [row["id"] for row in kept] == expected and len(expected) == 20  # 10 a level, file order
    ranks = {row["extra_info"]["level"]: row["rank"] for row in kept}
    assert ranks == {2: pytest.approx(4.5 / 20), 4: pytest.approx(14.5 / 20)}  # mean position of each tie group
    assert pq.read_schema(subset) == pq.read_schema(full["train"])
    with pytest.raises(ValueError, match=r"train.parquet: no row has a level in \[7\]"):
        level_subset(full["train"], [7], tmp_path / "none.parquet")


def test_unknown_levels_are_refused_before_any_run_starts(capsys):
    from bench.countdown import main

    with pytest.raises(SystemExit):
        main(["--levels", "2", "9", "--runs", "/nonexistent"])
    assert "--levels [9]: unknown; the countdown levels are [1, 2, 3, 4, 5, 6]" in capsys.readouterr().err


def test_paired_differences_separate_a_pair_whose_intervals_overlap_but_whose_every_seed_agrees():
    # seeds differ far more than the variants do, and every seed puts e3 0.02-0.04 above grpo
    grpo, e3 = [0.40, 0.60, 0.50, 0.70], [0.43, 0.62, 0.54, 0.72]
    variants = {
        "grpo_n8": {"coverage": {"per_seed": grpo}},
        "e3_n8": {"coverage": {"per_seed": e3}},
        "e3_knapsack_n8": {"coverage": {"per_seed": [0.45, 0.55, 0.50, 0.75]}},  # above and below grpo
    }
    found = paired_separations(variants, ["coverage"])
    assert [(p["higher"], p["lower"]) for p in found] == [("e3_n8", "grpo_n8")]
    assert found[0]["mean"] == pytest.approx(0.0275) and found[0]["per_seed"] == pytest.approx([0.03, 0.02, 0.04, 0.02])
    low, high = found[0]["ci95"]
    assert 0 < low < 0.0275 < high
    summarized = {name: {"coverage": mean_ci95(v["coverage"]["per_seed"])} for name, v in variants.items()}
    assert separations(summarized, ["coverage"]) == []  # unpaired intervals overlap
    mirrored = paired_separations({"e3_n8": variants["e3_n8"], "grpo_n8": variants["grpo_n8"]}, ["coverage"])
    assert [(p["higher"], p["lower"], p["ci95"]) for p in mirrored] == [("e3_n8", "grpo_n8", found[0]["ci95"])]
