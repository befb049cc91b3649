"""The ablation benchmark's numbers, computed from run folders."""

import json
import math
from pathlib import Path

import pytest

from bench.ablation import (
    KS,
    VARIANTS,
    markdown,
    mean_ci95,
    rollouts_by_rank,
    rollouts_to_reach,
    run_metrics,
    summarize,
    target_noise,
)
from core.config import AllocatorName
from launch import compose_run_config
from reporting.report import Run, load_run
from tests.support.records import step_record


def fake_run(path, entropies, epochs, curve=(), final=0.6, zero_advantage=0.25, ranks=(0.1, 0.9), counts=(2, 6)):
    """A finished run of len(entropies) steps of 8 rollouts over two questions; `curve` maps a step index to the
    held-out greedy accuracy its line records."""
    path.mkdir()
    lines = []
    for step, (h, e) in enumerate(zip(entropies, epochs, strict=True)):
        record = step_record(
            step,
            epoch=e,
            entropy=h,
            all_wrong_fraction=0.1 * e,
            zero_advantage_fraction=zero_advantage,
            rollouts_per_question=counts,
            question_ranks=ranks,
            next_temperature=1.0 + step / 100,
            heldout={"accuracy": curve[step]} if step in curve else {},
        )
        lines.append(json.dumps(record.to_log()))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    after = {"accuracy": final, **{f"sampled/all/pass@{k}": min(1.0, 0.3 + k / 100) for k in KS}}
    summary = {"steps": len(entropies), "heldout_before": {"accuracy": 0.3}, "heldout_after": after, "wall_s": 60.0}
    (path / "summary.json").write_text(json.dumps(summary))
    return load_run(path)


def test_mean_ci95_is_the_student_t_interval():
    result = mean_ci95([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)  # t(0.975, 2 df) * stdev / sqrt(n)
    assert result["mean"] == 2.0 and result["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert result["per_seed"] == [1.0, 2.0, 3.0]
    assert mean_ci95([0.5]) == {"mean": 0.5, "ci95": None, "per_seed": [0.5]}


def test_rollouts_to_reach_reads_the_held_out_curve(tmp_path):
    # 4 steps of 8 rollouts; held-out 0.3 before, 0.5 after step 1 (index 1), 0.7 after step 3, 0.6 at the end
    run = fake_run(tmp_path / "r", [0.1] * 4, [0] * 4, curve={1: 0.5, 3: 0.7})
    assert rollouts_to_reach(run, 0.3) == 0  # the base policy already does
    assert rollouts_to_reach(run, 0.5) == 16  # after two steps
    assert rollouts_to_reach(run, 0.65) == 32
    assert rollouts_to_reach(run, 0.8) is None


def test_rollouts_by_rank_bins_every_question_by_its_rank():
    records = [step_record(0, question_ranks=(0.1, 0.9), rollouts_per_question=(2, 6)),
               step_record(1, question_ranks=(0.3, 1.0), rollouts_per_question=(4, 8)),
               step_record(2, epoch=1, question_ranks=(0.6, 0.6), rollouts_per_question=(5, 5))]  # fmt: skip
    run = Run(run_dir=Path("r"), name="r", algo="e3", steps=records)
    easiest, easy, hard, hardest = rollouts_by_rank(run, epoch=0)  # epoch 1's questions left out
    assert (easiest, easy, hardest) == (2.0, 4.0, 7.0) and math.isnan(hard)  # rank 1.0 falls in the last bin


def test_run_metrics(tmp_path):
    run = fake_run(tmp_path / "r", entropies=[0.1, 0.1, 0.08, 0.06], epochs=[0, 0, 1, 1], zero_advantage=0.5)
    m = run_metrics(run)
    assert m["heldout_greedy_accuracy"] == 0.6 and m["pass@64"] == 0.94
    assert m["all_wrong_last_epoch"] == pytest.approx(0.1) and m["zero_advantage_fraction"] == 0.5
    assert m["entropy_last_vs_first_epoch"] == pytest.approx(0.07 / 0.1 - 1)
    assert m["rollouts_total"] == 32 and m["final_temperature"] == pytest.approx(1.03)


def test_target_noise_compares_a_k_step_target_with_the_first_epoch_mean(tmp_path):
    run = fake_run(tmp_path / "r", [0.8, 1.2, 0.8, 1.2, 5.0], [0, 0, 0, 0, 1])
    noise = target_noise([run], init_steps=(1, 2))
    assert noise["per_step_relative_std"] == pytest.approx(0.2)  # +-20% about the epoch mean of 1.0
    assert noise["target_relative_rms_error"] == {"1": pytest.approx(0.2), "2": pytest.approx(0.0)}


def test_summarize_and_markdown(tmp_path):
    grpo = [fake_run(tmp_path / f"g{s}", [0.1] * 4, [0, 0, 1, 1], curve={3: 0.6}, final=0.6) for s in range(2)]
    fast = [fake_run(tmp_path / f"e{s}", [0.1] * 4, [0, 0, 1, 1], curve={1: 0.6, 3: 0.7}, final=0.7) for s in (0, 1)]
    results = summarize({"grpo": grpo, "e3": fast})
    assert results["grpo_final_accuracy"] == pytest.approx(0.6)
    e3 = results["variants"]["e3"]
    assert e3["rollouts_to_grpo_final"]["per_seed"] == [0.5, 0.5] and e3["rollouts_to_grpo_final"]["reached"] == "2/2"
    assert e3["heldout_greedy_accuracy"]["mean"] == pytest.approx(0.7)
    assert e3["rollouts_by_rank_quarter_last_epoch"][0] == 2.0
    results.update(seeds=[0, 1], config=["a=b"], machine="m", date="d", bench_wall_s=60.0)
    text = markdown(results, "python -m bench.ablation")
    assert "| rollouts to GRPO's final accuracy / GRPO's budget | 1.00 [1.00, 1.00] (2/2 reached) | 0.50" in text
    assert "`python -m bench.ablation`" in text


def test_every_variant_composes_at_equal_budget():
    configs = {name: compose_run_config(overrides) for name, overrides in VARIANTS.items()}
    assert {(c.budget.n, c.train.questions_per_step) for c in configs.values()} == {(8, 32)}
    switches = [
        (name, c.temperature.enabled, c.temperature.annealing, c.budget.allocator) for name, c in configs.items()
    ]
    assert switches == [
        ("grpo", False, False, AllocatorName.uniform),
        ("dr", False, False, AllocatorName.e3),
        ("ts", True, False, AllocatorName.uniform),
        ("ts_an", True, True, AllocatorName.uniform),
        ("e3", True, True, AllocatorName.e3),
        ("e3_informative", True, True, AllocatorName.informative),
    ]
