"""Aggregation: fedmpi's per-round aggregation (Aggregator.add + finish: the
sample-weighted sum, the stats block, one reduce through the Link, the
ledger rows) of the full MiniLM update vs a raw `dist.all_reduce` (and a raw
`dist.reduce`) of the same flat fp32 buffer on the same ranks. Interleaved
in one job; each figure is the slowest rank's time. Target <= 1.2x.

  python -m bench.aggregation [--reps N] [--ranks R] [--numel N]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import Section, median, mpi_cmd, run_measured, shown, table

MINILM_NUMEL = 22_713_986  # all-MiniLM-L6-v2 + a 2-label head, all trainable (full fine-tuning)


def minilm_numel() -> int:
    try:
        from fedmpi.config import ModelConfig
        from fedmpi.models.backbone import build_model

        return sum(p.numel() for p in build_model(ModelConfig(name="minilm"), 2, 0).parameters())
    except Exception:  # weights not installed: the known size
        return MINILM_NUMEL


def bench(reps: int = 5, ranks: int = 3, numel: int | None = None) -> Section:
    numel = numel or minilm_numel()
    out = Path(tempfile.mkdtemp(prefix="bench_agg_")) / "agg.json"
    cmd = mpi_cmd(ranks, "bench.worker", "aggregate", str(out), str(numel), str(reps), "1")
    run_measured(cmd, timeout=1200).check()
    times = json.loads(out.read_text())["times"]
    base = median(times["raw all_reduce fp32"])
    rows = [[k, median(v) * 1e3, median(v) / base] for k, v in times.items()]
    f64, f32 = median(times["fedmpi float64"]) / base, median(times["fedmpi float32"]) / base
    body = (f"{numel:,} fp32 elements ({numel * 4 / 2**20:.0f} MiB, MiniLM full fine-tuning), {ranks} ranks "
            f"(server + {ranks - 1} client ranks, one client each), gloo on CPU; median of {reps} interleaved "
            "repetitions, each the slowest rank's time.\n\n"
            + table(["variant", "ms", "÷ raw all_reduce"], rows)
            + f"\n\n**fedmpi float64 (default) / raw all_reduce = {f64:.2f}×; fedmpi float32 "
            f"(`federation.aggregation_dtype: float32`) / raw all_reduce = {f32:.2f}×** (target ≤ 1.2×).")
    return Section("Aggregation vs raw dist.all_reduce", body,
                   {"agg_ratio_f64": f64, "agg_ratio_f32": f32, "numel": numel}, [shown(cmd)])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ranks", type=int, default=3)
    ap.add_argument("--numel", type=int, default=None)
    a = ap.parse_args()
    print(bench(a.reps, a.ranks, a.numel).markdown())
