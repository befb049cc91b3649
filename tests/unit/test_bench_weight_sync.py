"""bench.weight_sync's reading of its rows: the paired speed-ups and the result table."""

from __future__ import annotations

from bench.weight_sync import markdown, paired_speedups


def row(transport: str, samples: list[float], params: int = 1000, workers: int = 2) -> dict:
    return {
        "transport": transport,
        "params": params,
        "workers": workers,
        "seconds": sorted(samples)[len(samples) // 2],
        "samples_s": samples,
        "peak_host_bytes": 2_000_000,
        "bytes_per_worker": 4 * params,
        "bound_bytes": 1_000_000,
    }


def test_paired_speedups_divide_each_round_by_its_own_round():
    store, collective = row("object_store", [3.0, 6.0, 4.0]), row("collective", [1.0, 1.5, 2.0])
    assert paired_speedups(store, collective) == "2.00-4.00x"  # rounds: 3.0, 4.0, 2.0


def test_markdown_has_one_line_per_size_and_worker_count_with_both_transports():
    rows = [
        row("collective", [1.0, 1.2, 1.1]),
        row("object_store", [3.3, 3.0, 3.6]),
        row("collective", [0.5, 0.5, 0.5], workers=1),
        row("object_store", [1.0, 1.5, 2.0], workers=1),
    ]
    doc = {
        "command": "python -m bench.weight_sync",
        "machine": "test CPU",
        "wall_s": 1.0,
        "learner_ranks": 2,
        "engine": "vllm",
        "dtype": "float32",
        "bucket_mb": 32.0,
        "repeats": 3,
        "workers_mmap_threshold": "glibc default",
        "rows": rows,
    }
    table = [line for line in markdown(doc).splitlines() if line.startswith("| 0.0M")]
    assert table == [
        "| 0.0M | 1 | 0.0 | 1.500 | 0.500 | 3.00x | 2.00-4.00x | 2.0 | 2.0 | 1.0 |",
        "| 0.0M | 2 | 0.0 | 3.300 | 1.100 | 3.00x | 2.50-3.30x | 2.0 | 2.0 | 1.0 |",
    ]
