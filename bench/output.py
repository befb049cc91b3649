"""Where a benchmark's results go: `<out>/<stem>.json` (the document) and `<out>/<stem>.md` (its page)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, stem: str, doc: dict[str, Any], page: str) -> None:
    """Write `doc` to `out/stem.json` and `page` to `out/stem.md` (creating `out`), and print the page."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(page, encoding="utf-8")
    print(page)
