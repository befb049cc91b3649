"""The outputs of `mode=eval`: the evaluation laid out by data source (`eval.json`) and as Markdown (`eval.md`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from core.passk import OVERALL
from reporting.markdown import markdown_table


def eval_results(
    *,
    model: str,
    test: str,
    sources_of_questions: list[str],
    greedy: dict[str, float],
    sampled: dict[str, float] | None,
    num_samples: int,
    temperature: float,
    ks: list[int],
) -> dict[str, Any]:
    """The evaluation laid out by source, as `eval.json` holds it.

    `greedy` is `greedy_accuracy`'s result, `sampled` that of `sampled_pass_at_k` with `ks` (None: no sampled
    answers). Returns `model`, `test`, `questions`, `num_samples`, `temperature`, `ks`, and under `overall` and
    under `sources[<source>]` (every data source of the questions, sorted) one row each: `questions`,
    `greedy_accuracy`, and with sampled answers `sampled_accuracy` (the mean share of correct answers per
    question, which is mean@k for every k) and `pass@<k>` for each k. Rows are keyed by the source names as they
    are, so a name may contain `/`; the figures are looked up under the exact keys the evaluation wrote."""
    counts = Counter(sources_of_questions)

    def row(source: str | None) -> dict[str, float]:
        figures: dict[str, float] = {
            "questions": len(sources_of_questions) if source is None else counts[source],
            "greedy_accuracy": greedy["accuracy" if source is None else f"accuracy/{source}"],
        }
        if sampled is not None:
            prefix = OVERALL if source is None else source
            figures["sampled_accuracy"] = sampled[f"{prefix}/mean@{ks[-1]}"]
            figures.update({f"pass@{k}": sampled[f"{prefix}/pass@{k}"] for k in ks})
        return figures

    return {
        "model": model,
        "test": test,
        "questions": len(sources_of_questions),
        "num_samples": num_samples if sampled is not None else 0,
        "temperature": temperature,
        "ks": list(ks) if sampled is not None else [],
        "overall": row(None),
        "sources": {source: row(source) for source in sorted(counts)},
    }


def eval_markdown(results: dict[str, Any]) -> str:
    """`eval_results` as Markdown: one table row for all questions, then one per data source (its name as it is),
    with the greedy accuracy, and with sampled answers their accuracy once and pass@k for each k."""
    sampled = results["num_samples"] > 0
    columns = ["questions", "greedy_accuracy"]
    headers = ["questions", "greedy"]
    if sampled:
        columns += ["sampled_accuracy", *(f"pass@{k}" for k in results["ks"])]
        headers += [f"sampled (mean of {results['num_samples']})", *(f"pass@{k}" for k in results["ks"])]
    lines = [
        f"# Evaluation of {results['model']} on {results['test']} ({results['questions']} questions)",
        "",
        f"Greedy accuracy: {results['overall']['greedy_accuracy']:.3f}",
        "",
    ]
    if sampled:
        lines += [
            f"{results['num_samples']} answers sampled per question at temperature {results['temperature']}: "
            "*sampled* is the mean share of them that is correct (mean@k, the same for every k); pass@k is the "
            "unbiased estimator of the chance that at least one of k of them is correct.",
            "",
        ]
    rows = [("all", results["overall"]), *results["sources"].items()]
    cells = lambda row: [str(int(row[c])) if c == "questions" else f"{row[c]:.3f}" for c in columns]  # noqa: E731
    lines += markdown_table(["source", *headers], [[name, *cells(row)] for name, row in rows])
    return "\n".join(lines) + "\n"
