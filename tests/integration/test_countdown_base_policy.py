"""A reduced countdown base-policy build: a standard, cached Hugging Face checkpoint that generates and is scored;
and the whole system trains on the countdown task (`+experiment=smoke data.task=countdown`) with it.

The default countdown base policy takes minutes to build on 2 cores, like the arithmetic one; these tests build a
tiny one (seconds) so that the suite does not pay for a second full build. `eval_base` measures the real one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.arithmetic.cache import STAMP_FILE
from tasks.arithmetic.tokenizer import IM_END
from tasks.countdown import build_base, policy_eval
from tasks.countdown.build_base import BasePolicyConfig, ensure_base_policy
from tasks.countdown.generate import CountdownDataConfig, ensure_datasets

TINY = BasePolicyConfig(
    data=CountdownDataConfig(train_size=60, valid_size=12, test_size=24),
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    max_position_embeddings=192,
    sft_pool_per_level=20,
    sft_steps=6,
    batch_size=8,
    warmup_steps=1,
    stop_accuracy=0.0,  # the first probe stops the warm-start
    probe_every=3,
    probe_per_level=2,
)

pytestmark = pytest.mark.slow  # builds a base policy (a reduced one, but the whole pipeline)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_base_policy(tmp_path_factory.mktemp("countdown-policy") / "base", TINY)


def test_checkpoint_is_a_standard_hf_directory_built_once(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", STAMP_FILE} <= names
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(IM_END) == tokenizer.eos_token_id
    report = json.loads((model_dir / build_base.BUILD_REPORT_FILE).read_text())
    assert report["sft_steps_run"] == 3 and [p["step"] for p in report["probes"]] == [3]
    assert all(count > 0 for count in report["sft_examples"].values())
    monkeypatch.setattr(build_base, "build_base_policy", lambda *a: pytest.fail("rebuilt on a cache hit"))
    assert ensure_base_policy(model_dir, TINY) == model_dir


def test_it_generates_and_every_sample_is_scored(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scored = policy_eval.sample_and_score(
        model, tokenizer, ["Numbers 3 5 7. Make 22."], ["3 5 7 -> 22"], [1], samples=4, temperature=1.0
    )
    assert len(scored) == 1 and len(scored[0].correct) == 4 and len(scored[0].solution_keys) == 4


def test_training_questions_train_end_to_end(model_dir: Path, ray_cluster, tmp_path: Path) -> None:
    """The smoke experiment on the countdown task (the tiny policy stands in for the real one)."""
    import launch
    from tests.support.config import run_config

    splits = ensure_datasets(tmp_path / "data", TINY.data)  # the tiny splits: the default ones take a while
    cfg = run_config(
        tmp_path,
        "data.task=countdown",
        *(f"data.{name}_path={path}" for name, path in splits.items()),
        f"model.path={model_dir}",
        f"cache_dir={tmp_path / 'cache'}",
        "rollout.engine=hf",
        "budget.allocator=knapsack",
        "run_name=smoke-countdown",
    )
    launch.train(cfg)
    run_dir = tmp_path / "smoke-countdown"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "step" in line][:3] == [0, 1, 2]
    coverage = [line["reward/coverage"] for line in lines]
    assert coverage == sorted(coverage) and all(0.0 <= c <= 1.0 for c in coverage)  # solved once, solved for good
    assert all("learner/entropy_top20" in line for line in lines)
    # countdown answers have a canonical form: distinct correct answers are counted on steps that solved any
    assert all(line.get("reward/distinct_correct", 1.0) >= 1.0 for line in lines)
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir / "difficulty.parquet")
    assert "recent" in table.column_names
    assert all(row.startswith("countdown-") for row in table["question_id"].to_pylist())


def test_a_response_budget_shorter_than_the_warm_start_traces_is_warned_about(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tasks.prepare import warn_on_short_responses
    from tests.support.config import run_config

    longest = json.loads((model_dir / build_base.BUILD_REPORT_FILE).read_text())["longest_response_tokens"]
    assert longest > 8
    with caplog.at_level("WARNING", logger="tasks.prepare"):
        warn_on_short_responses(run_config(tmp_path, f"rollout.max_new_tokens={longest}"), model_dir)
        assert not caplog.records
        warn_on_short_responses(run_config(tmp_path, "rollout.max_new_tokens=8"), model_dir)
    assert len(caplog.records) == 1 and f"rollout.max_new_tokens={longest}" in caplog.records[0].getMessage()


def test_a_build_whose_responses_outrun_the_sampling_budget_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy_eval, "MAX_NEW_TOKENS", 10)
    out = tmp_path / "base"
    out.mkdir()
    with pytest.raises(ValueError, match="max_steps"):
        build_base.build_base_policy(out, TINY)


def test_eval_base_measures_a_runs_held_out_file_without_the_targets_verdict(model_dir: Path, tmp_path: Path) -> None:
    """`eval_base --file` on a level subset (what `bench.countdown --levels` trains on): those levels only, the
    file's first rows, no verdict (the targets are on the default splits' easiest and hardest levels)."""
    from bench.countdown import level_subset
    from tasks.countdown import eval_base

    splits = ensure_datasets(tmp_path / "data", TINY.data)
    subset = level_subset(splits["valid"], [2, 3], tmp_path / "valid-L2-3.parquet")
    out = tmp_path / "result.json"
    eval_base.main(
        ["--model", str(model_dir), "--file", str(subset), "--first", "3", "--samples", "64", "--threads", "1",
         "--json-out", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["puzzles"] == 3 and result["split"] == str(subset) and "targets" not in result
    assert set(result["per_level"]) <= {"2", "3"}
    with pytest.raises(SystemExit):
        eval_base.main(["--model", str(model_dir), "--file", str(tmp_path / "missing.parquet")])
