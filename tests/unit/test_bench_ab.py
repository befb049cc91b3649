"""The A/B benchmark's numbers, computed from run folders."""

import json

import pytest

from bench.ab import aggregate, markdown, run_metrics
from tests.support.records import step_record


def fake_run(path, entropies, all_wrong, epochs, target=0.8, temperature=1.1):
    path.mkdir()
    lines = []
    for step, (h, w, e) in enumerate(zip(entropies, all_wrong, epochs, strict=True)):
        record = step_record(
            step,
            epoch=e,
            entropy=h,
            all_wrong_fraction=w,
            rollouts_per_question=(128, 128),
            target_entropy=None if step == 0 else target,
        )
        lines.append(json.dumps(record.to_log()))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = {
        "heldout_before": {"accuracy": 0.3},
        "heldout_after": {"accuracy": 0.5, "sampled/all/mean@8": 0.45},
        "final_temperature": temperature,
        "wall_s": 100.0,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_run_metrics(tmp_path):
    run = fake_run(tmp_path / "r", entropies=[1.0, 0.9, 0.8, 0.6], all_wrong=[0.5, 0.4, 0.3, 0.1], epochs=[0, 0, 1, 1])
    m = run_metrics(run)
    assert m["all_wrong_last_epoch"] == pytest.approx(0.2)
    assert m["entropy_relative_drift"] == pytest.approx(0.7 / 1.0 - 1)
    assert m["entropy_off_target_last_epoch"] == pytest.approx((0.0 + 0.25) / 2)
    assert m["entropy_mean_off_target_last_epoch"] == pytest.approx(abs(0.7 / 0.8 - 1))
    assert m["rollouts_total"] == 4 * 256 and m["steps"] == 4
    assert m["heldout_mean_at_8"] == 0.45 and m["final_temperature"] == 1.1


def test_aggregate_and_markdown(tmp_path):
    a = run_metrics(fake_run(tmp_path / "a", [1.0, 0.9], [0.5, 0.3], [0, 0], temperature=1.0))
    b = run_metrics(fake_run(tmp_path / "b", [1.0, 0.8], [0.5, 0.1], [0, 0], temperature=1.2))
    both = aggregate([a, b])
    assert both["final_temperature"] == pytest.approx(1.1) and len(both["per_seed"]) == 2
    text = markdown({"grpo": both, "e3": both, "seeds": [0, 1], "machine": "m", "date": "d"}, "python -m bench.ab")
    assert "| final temperature | 1.100 | 1.100 |" in text and "`python -m bench.ab`" in text
