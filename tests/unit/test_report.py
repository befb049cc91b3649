"""The run report: synthesized E3 and GRPO runs give one HTML file with decodable, non-blank plots."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text
from PIL import Image

from core.step_record import StepRecord
from reporting.report import PLOTS, build_figures, load_run, mean_phase_seconds, moving_average, write_report
from tests.support.records import step_record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]
PHASE_SECONDS = {"sample": 0.01, "allocate": 0.002, "generate": 1.5, "score": 0.2, "train": 0.9, "sync": 0.1}


def fake_steps(algo: str, epochs: int = 3, steps_per_epoch: int = 4, batch: int = 8) -> list[StepRecord]:
    """Plausible step records: E3 gives hard questions more rollouts and holds entropy; GRPO does not."""
    rng = np.random.default_rng(0 if algo == "e3" else 1)
    steps, temperature = [], 1.0
    for step in range(epochs * steps_per_epoch):
        epoch = step // steps_per_epoch
        ranks = rng.uniform(0, 1, batch) if epoch else np.full(batch, 0.5)
        counts = np.round(2 + 12 * ranks).astype(int) if algo == "e3" else np.full(batch, 8)
        entropy = 0.76 + rng.normal(0, 0.02) if algo == "e3" else 0.76 - 0.01 * step
        next_temperature = temperature + (0.02 * (0.76 - entropy) if algo == "e3" else 0.0)
        timing = {p: s * rng.uniform(0.9, 1.1) for p, s in PHASE_SECONDS.items()}
        steps.append(
            step_record(
                step,
                epoch=epoch,
                end_of_epoch=step % steps_per_epoch == steps_per_epoch - 1,
                temperature=temperature,
                next_temperature=next_temperature,
                target_entropy=None if step < 2 or algo == "grpo" else 0.76,
                entropy=entropy,
                reward_mean=0.3 + 0.03 * step,
                accuracy=min(1.0, 0.3 + 0.03 * step + rng.normal(0, 0.03)),
                all_wrong_fraction=max(0.0, 0.4 - 0.02 * step),
                all_correct_fraction=0.05,
                question_ids=tuple(f"q{i}" for i in range(batch)),
                rollouts_per_question=tuple(int(c) for c in counts),
                question_ranks=tuple(float(r) for r in ranks),
                response_length_mean=120.0,
                learner={"loss": 0.01, "entropy_top20": 2.5 * entropy, "is_ratio_mean": 1.0, "is_ratio_max": 1.3},
                timing={"step": sum(timing.values()) + 0.05, **timing},
                staleness=(int(counts.sum()) // 2, int(counts.sum()) - int(counts.sum()) // 2),  # one step ahead
            )
        )
        temperature = next_temperature
    return steps


def make_run(root: Path, name: str, algo: str, steps: list[StepRecord], summary: bool = True) -> Path:
    """A run folder as the training run writes it (metrics.jsonl, config.yaml, summary.json when finished)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(s.to_log()) + "\n" for s in steps), encoding="utf-8")
    (run_dir / "config.yaml").write_text(f"run_name: {name}\nalgo: {algo}\n", encoding="utf-8")
    if summary:
        (run_dir / "summary.json").write_text(
            json.dumps(
                {
                    "run_name": name,
                    "algo": algo,
                    "steps": len(steps),
                    "heldout_before": {"accuracy": 0.41},
                    "heldout_after": {"accuracy": 0.55},
                    "final_temperature": steps[-1].next_temperature,
                    "wall_s": 123.4,
                    "run_dir": str(run_dir),
                }
            ),
            encoding="utf-8",
        )
    return run_dir


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def assert_real_plot(png: bytes) -> None:
    """A decodable PNG of plot size that is not a single flat colour."""
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width >= 400 and image.height >= 150, image.size
    pixels = np.asarray(image).astype(np.int64)
    assert pixels.std() > 5.0
    colours = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    assert len(np.unique(colours)) > 20


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    return [
        make_run(tmp_path, "e3-demo", "e3", fake_steps("e3")),
        make_run(tmp_path, "grpo-demo", "grpo", fake_steps("grpo")),
    ]


def test_report_embeds_one_real_png_per_plot_and_names_both_runs(two_runs: list[Path]) -> None:
    out = write_report(two_runs)

    assert out == two_runs[0] / "report.html"
    html = out.read_text(encoding="utf-8")
    pngs = embedded_pngs(html)
    assert len(pngs) == len(PLOTS) == 6
    for png in pngs:
        assert_real_plot(png)
    assert "e3-demo (e3)" in html and "grpo-demo (grpo)" in html
    assert not re.search(r'(src|href)="(?!data:)', html), "the report must not reference external assets"
    written = {p.name: p.read_bytes() for p in (out.parent / "report").glob("*.png")}
    assert written == {f"{plot.name}.png": png for plot, png in zip(PLOTS, pngs, strict=True)}


def test_every_plot_overlays_both_runs(two_runs: list[Path]) -> None:
    runs = [load_run(d) for d in two_runs]

    for name, fig in build_figures(runs).items():
        texts = " ".join(t.get_text() for t in fig.findobj(Text))
        assert "e3-demo (e3)" in texts and "grpo-demo (grpo)" in texts, name


def test_summary_table_values(two_runs: list[Path]) -> None:
    html = write_report(two_runs, two_runs[1] / "cmp.html").read_text(encoding="utf-8")

    assert "0.410 / 0.550" in html
    assert "123.4 s" in html
    # GRPO's all-wrong fraction in its last epoch (steps 8..11): mean of 0.4 - 0.02 * step
    assert f"{np.mean([0.4 - 0.02 * s for s in range(8, 12)]):.3f}" in html
    assert re.search(r"generate \d+%", html)
    assert (two_runs[1] / "cmp" / "entropy.png").is_file()


def test_run_in_progress_partial_line_no_summary_single_step(tmp_path: Path) -> None:
    steps = fake_steps("e3", epochs=1, steps_per_epoch=1)
    steps[0] = replace(steps[0], timing={p: s for p, s in steps[0].timing.items() if p != "sync"})
    run_dir = make_run(tmp_path, "live", "e3", steps, summary=False)
    with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"step": 1, "epoch": 0, "entro')

    run = load_run(run_dir)
    html = write_report([run_dir]).read_text(encoding="utf-8")

    assert run.skipped_partial_line and len(run.steps) == 1
    assert run.label == "live (e3)"
    assert "partial last line" in html and "n/a / n/a" in html
    for png in embedded_pngs(html):
        assert_real_plot(png)


def test_malformed_line_before_the_last_is_an_error(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bad", "e3", fake_steps("e3", epochs=1))
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    lines[1] = "not json"
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        load_run(run_dir)


def test_missing_run_folder_and_empty_list_are_named_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        write_report([tmp_path / "nowhere"])
    with pytest.raises(ValueError, match="run_dirs is empty"):
        write_report([])


def test_phase_means_put_uncovered_step_time_in_other(tmp_path: Path) -> None:
    steps = fake_steps("grpo", epochs=1, steps_per_epoch=2)
    steps[1] = replace(steps[1], timing={p: s for p, s in steps[1].timing.items() if p != "generate"})
    run = load_run(make_run(tmp_path, "t", "grpo", steps))

    means = mean_phase_seconds(run)

    assert means["generate"] == pytest.approx(steps[0].timing["generate"])  # averaged over the steps that timed it
    assert list(means) == [*PHASE_SECONDS, "other"]  # the phases the steps timed, in order: none falls into other
    assert sum(means.values()) == pytest.approx(np.mean([s.step_seconds for s in steps]))
    assert means["other"] > 0.0


def test_moving_average_ignores_gaps() -> None:
    values = np.array([1.0, math.nan, 3.0, 5.0])

    assert moving_average(values, 2) == pytest.approx([1.0, 1.0, 3.0, 4.0])
    assert np.isnan(moving_average(np.array([math.nan]), 3)).all()


def test_cli_prints_the_written_path(two_runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cli" / "both.html"
    out.parent.mkdir()

    done = subprocess.run(
        [sys.executable, "-m", "reporting", *map(str, two_runs), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert len(embedded_pngs(out.read_text(encoding="utf-8"))) == len(PLOTS)


def test_run_with_no_steps_yet_still_gets_a_report(tmp_path: Path) -> None:
    empty = tmp_path / "just-started"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("", encoding="utf-8")

    html = write_report([empty]).read_text(encoding="utf-8")

    assert "<td>0</td>" in html
    assert len(embedded_pngs(html)) == len(PLOTS)


def with_heldout_every(steps: list[StepRecord], every: int) -> list[StepRecord]:
    """The step records of a run with `eval.every_steps=every`: held-out accuracy after every `every`-th step."""
    held = {"accuracy/arithmetic/L1": 0.9}
    return [
        replace(s, heldout={"accuracy": 0.4 + 0.01 * s.step, **held}) if (s.step + 1) % every == 0 else s for s in steps
    ]


def test_heldout_curve_from_step_lines_before_and_after(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, "v", "e3", with_heldout_every(fake_steps("e3"), 5)))  # 12 steps

    x, y = run.heldout_curve()

    # before at 0 steps done, after steps 4 and 9 (lines 4 and 9 hold the policy after 5 and 10 steps), the end
    assert x.tolist() == [0.0, 5.0, 10.0, 12.0]
    assert y.tolist() == pytest.approx([0.41, 0.44, 0.49, 0.55])
    html = write_report([run.run_dir]).read_text(encoding="utf-8")
    assert "2 evaluations, best 0.490 after 10 steps" in html


def test_heldout_point_of_the_last_step_is_not_doubled_by_the_after_value(tmp_path: Path) -> None:
    run = load_run(make_run(tmp_path, "v", "e3", with_heldout_every(fake_steps("e3"), 4)))

    x, y = run.heldout_curve()

    assert x.tolist() == [0.0, 4.0, 8.0, 12.0] and y[-1] == pytest.approx(0.4 + 0.01 * 11)  # the step line's value


def test_accuracy_plot_draws_the_heldout_curve_of_each_run(two_runs: list[Path], tmp_path: Path) -> None:
    validated = make_run(tmp_path, "val", "grpo", with_heldout_every(fake_steps("grpo"), 3))
    runs = [load_run(two_runs[0]), load_run(validated)]

    fig = build_figures(runs)["accuracy"]

    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    e3, val = lines["e3-demo (e3): held-out greedy"], lines["val (grpo): held-out greedy"]
    assert list(e3.get_xdata()) == [0.0, 12.0] and list(e3.get_ydata()) == pytest.approx([0.41, 0.55])
    assert list(val.get_xdata()) == [0.0, 3.0, 6.0, 9.0, 12.0]
    assert list(val.get_ydata()) == pytest.approx([0.41, 0.42, 0.45, 0.48, 0.51])


def test_run_in_progress_takes_the_before_value_from_its_file(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "live", "e3", with_heldout_every(fake_steps("e3", epochs=1), 2), summary=False)
    (run_dir / "heldout_before.json").write_text(json.dumps({"accuracy": 0.3}), encoding="utf-8")

    run = load_run(run_dir)
    html = write_report([run_dir]).read_text(encoding="utf-8")

    assert run.heldout_curve()[0].tolist() == [0.0, 2.0, 4.0]
    assert "0.300 / n/a" in html
