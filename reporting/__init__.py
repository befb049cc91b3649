"""What a run leaves to read: the run log (`metrics.jsonl`, W&B, gauges), the HTML run report
(`python -m reporting runs/a runs/b`), the outputs of `mode=eval` and the one Markdown table writer. Imports only
`core` among the project's packages."""
