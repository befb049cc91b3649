"""Reading a W&B run's transaction log (`run-<id>.wandb`) back, for tests.

wandb 0.31 keeps its own reader in the Go core (`wandb-core`) and ships none for Python; the file is a LevelDB log
(a 7-byte W&B header, then 32 KiB blocks of records, each a 7-byte header and a fragment) whose records are wandb's
own protobuf `Record` messages, decoded here with wandb's `wandb_internal_pb2`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = b":W&B\xe1\xbe\x00"
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator:
    """Every `wandb_internal_pb2.Record` of the run's transaction log at `path`, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if not data.startswith(HEADER):
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:7]!r})")
    pos, pending = len(HEADER), b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # the block's tail is too short for a record header: padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        fragment = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zeroes up to the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pending = fragment if kind in (FULL, FIRST) else pending + fragment
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def history(path: Path) -> dict[int, dict[str, Any]]:
    """The run's history as logged: `{step: {key: value}}`, nested values keyed by their path
    (`epoch/difficulty_table/nrows`), JSON values decoded."""
    steps: dict[int, dict[str, Any]] = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            steps.setdefault(int(items["_step"]), {}).update(items)
    return steps
