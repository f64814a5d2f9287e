"""One row per run: the numbers a paper table needs, as CSV (exact) and Markdown (readable)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fedmpi.report.runs import Run


@dataclass(frozen=True)
class Column:
    key: str  # CSV header
    title: str  # Markdown header
    value: Callable[[Run], Any]
    fmt: Callable[[Any], str]


def _plain(v: Any) -> str:
    return "" if v is None else str(v)


def _decimals(n: int) -> Callable[[Any], str]:
    return lambda v: "–" if v is None else f"{v:.{n}f}"


def _thousands(v: Any) -> str:
    return "–" if v is None else f"{int(v):,}"


COLUMNS = [
    Column("name", "run", lambda r: r.name, _plain),
    Column("algorithm", "algorithm", lambda r: r.algorithm, _plain),
    Column("method", "method", lambda r: r.method, _plain),
    Column("final_accuracy", "final accuracy", lambda r: r.final_accuracy, _decimals(4)),
    Column("total_bytes_up", "bytes up", lambda r: int(r.total("total_bytes_up", "bytes_up")), _thousands),
    Column("total_bytes_down", "bytes down", lambda r: int(r.total("total_bytes_down", "bytes_down")), _thousands),
    Column("client_gflops", "client GFLOPs", lambda r: r.total("total_client_flops", "client_flops") / 1e9,
           _decimals(3)),
    Column("emulated_seconds", "emulated time (s)", lambda r: float(r.total("emulated_seconds", "emulated_seconds")),
           _decimals(2)),
    Column("wall_seconds", "wall time (s)", lambda r: float(r.total("wall_seconds", "wall_seconds")), _decimals(2)),
    Column("compression_up", "compression up", lambda r: (r.summary.get("compression") or {}).get("ratio_up"),
           lambda v: "–" if v is None else f"{v:.2f}×"),
    Column("compression_down", "compression down",
           lambda r: (r.summary.get("compression") or {}).get("ratio_down"), lambda v: "–" if v is None else f"{v:.2f}×"),
    Column("epsilon", "ε", lambda r: r.summary.get("epsilon"), _decimals(3)),
]


def rows(runs: list[Run]) -> list[dict[str, Any]]:
    return [{c.key: c.value(run) for c in COLUMNS} for run in runs]


def write_csv(runs: list[Run], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[c.key for c in COLUMNS])
        writer.writeheader()
        for row in rows(runs):
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def markdown(runs: list[Run]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    numeric = {c.key for c in COLUMNS[3:]}
    lines = ["| " + " | ".join(c.title for c in COLUMNS) + " |",
             "|" + "|".join("---:" if c.key in numeric else "---" for c in COLUMNS) + "|"]
    for row in rows(runs):
        lines.append("| " + " | ".join(cell(c.fmt(row[c.key])) for c in COLUMNS) + " |")
    return "\n".join(lines)
