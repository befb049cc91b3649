"""The allocators' simulation at known success rates runs in well under a second at a small size and measures
what it says."""

import json

from bench.allocators_sim import ALLOCATOR_NAMES, SimConfig, main, simulate

SMALL = SimConfig(questions=128, questions_per_step=16, epochs=2)


def test_uniform_gives_every_question_the_mean_and_the_others_move_the_budget() -> None:
    uniform = simulate("uniform", 8, "narrow", 0, SMALL)
    assert uniform["hard_rollouts"] == 8.0
    for name in ALLOCATOR_NAMES:
        result = simulate(name, 8, "wide", 0, SMALL)
        assert 0 < result["gradient"] < 1 and 0 < result["hard_solved"] < 1
    assert simulate("e3", 8, "narrow", 0, SMALL)["hard_rollouts"] > 8  # ranks send more to the hard questions


def test_the_cli_writes_markdown_and_json(tmp_path) -> None:
    main(["--seeds", "0", "--means", "4", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "allocators_sim.json").read_text())
    assert set(payload["results"]) == {f"{a}@n=4,{b}" for a in ALLOCATOR_NAMES for b in ("narrow", "wide")}
    assert "| knapsack | 4 |" in (tmp_path / "allocators_sim.md").read_text()
