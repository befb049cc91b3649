"""`python -m reporting runs/e3-demo runs/grpo-demo [--out FILE]`: write the run report (reporting/report.py)."""

from reporting.report import main

main()
