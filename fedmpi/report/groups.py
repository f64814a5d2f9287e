"""Runs that differ only in their seed, as one configuration: mean ± std over seeds,
and paired comparisons whose 95% interval decides whether a difference is one.

A group is every run whose config.yaml is the same once `seed`, `name` and
`output` are set aside; its label is the run name with the seed part removed
(`lora-s1` -> `lora`). Two groups are compared on the seeds they share: the
per-seed differences' mean and its t-interval (Student, n - 1 degrees of freedom).
"""
from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

from fedmpi.report.runs import Run

# Two-sided 95% Student t quantiles for n - 1 = 1..30 degrees of freedom.
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
       2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
       2.045, 2.042]
IGNORED = ("seed", "name", "output")


def seed_of(run: Run) -> int:
    return int(run.config.get("seed", run.summary.get("seed", 0)) or 0)


def label_of(run: Run) -> str:
    return re.sub(r"[-_]s(eed)?=?\d+$", "", run.name)


def config_key(run: Run) -> str:
    tree = {k: v for k, v in run.config.items() if k not in IGNORED}
    return json.dumps(tree, sort_keys=True, default=str)


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(seed_of(r) for r in self.runs)

    def values(self, metric: Callable[[Run], float | None]) -> dict[int, float]:
        out = {}
        for r in self.runs:
            v = metric(r)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                out[seed_of(r)] = float(v)
        return out

    def mean_std(self, metric: Callable[[Run], float | None]) -> tuple[float | None, float | None, int]:
        vals = list(self.values(metric).values())
        if not vals:
            return None, None, 0
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by configuration (seed aside), in first-seen order."""
    by_key: dict[str, Group] = {}
    for r in runs:
        key = config_key(r)
        if key not in by_key:
            by_key[key] = Group(label_of(r))
        by_key[key].runs.append(r)
    labels = [g.label for g in by_key.values()]
    for g in by_key.values():  # two configurations may carry one label: keep them apart
        if labels.count(g.label) > 1:
            g.label = f"{g.label} [{g.runs[0].name}]"
    return list(by_key.values())


@dataclass
class Paired:
    mean: float
    low: float
    high: float
    n: int
    diffs: dict[int, float]

    @property
    def significant(self) -> bool:
        """The 95% interval of the paired per-seed differences excludes 0."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def text(self, scale: float = 1.0, unit: str = "") -> str:
        if self.n < 2:
            return f"{self.mean * scale:+.2f}{unit} (1 seed: no interval)"
        verdict = "a difference" if self.significant else "not a difference"
        return (f"{self.mean * scale:+.2f}{unit} [95% CI {self.low * scale:+.2f}, {self.high * scale:+.2f}], "
                f"{self.n} seeds: {verdict}")


def paired(a: Group, b: Group, metric: Callable[[Run], float | None]) -> Paired | None:
    """a - b on the seeds both ran."""
    va, vb = a.values(metric), b.values(metric)
    seeds = sorted(set(va) & set(vb))
    if not seeds:
        return None
    diffs = {s: va[s] - vb[s] for s in seeds}
    d = list(diffs.values())
    mean = statistics.fmean(d)
    if len(d) < 2:
        return Paired(mean, math.nan, math.nan, 1, diffs)
    half = T95[min(len(d) - 2, len(T95) - 1)] * statistics.stdev(d) / math.sqrt(len(d))
    return Paired(mean, mean - half, mean + half, len(d), diffs)


def fmt_mean_std(m: float | None, s: float | None, n: int, scale: float = 1.0, digits: int = 3) -> str:
    if m is None:
        return "–"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}" + (f" (n={n})" if n != 3 else "")


def final(key: str) -> Callable[[Run], Any]:
    return lambda r: r.summary.get(key)


def total_bytes(r: Run) -> float:
    return float(r.total("total_bytes_up", "bytes_up") + r.total("total_bytes_down", "bytes_down"))


GROUP_COLUMNS: list[tuple[str, str, Callable[[Run], Any], float, int]] = [
    # (csv key, title, metric, scale, digits)
    ("final_accuracy", "final accuracy", final("final_accuracy"), 1.0, 4),
    ("best_accuracy", "best accuracy", final("best_accuracy"), 1.0, 4),
    ("total_bytes", "bytes up+down (MB)", total_bytes, 1e-6, 2),
    ("client_gflops", "client GFLOPs", lambda r: r.total("total_client_flops", "client_flops"), 1e-9, 1),
    ("emulated_seconds", "emulated time (s)", lambda r: r.total("emulated_seconds", "emulated_seconds"), 1.0, 1),
    ("wall_seconds", "wall time per run (s)", final("wall_seconds"), 1.0, 0),
]


def markdown(groups: list[Group]) -> str:
    head = ["configuration", "seeds"] + [t for _, t, _, _, _ in GROUP_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(GROUP_COLUMNS)]
    for g in groups:
        cells = [g.label.replace("|", "\\|"), ",".join(map(str, g.seeds))]
        for _, _, metric, scale, digits in GROUP_COLUMNS:
            m, s, n = g.mean_std(metric)
            cells.append(fmt_mean_std(m, s, n, scale, digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(groups: list[Group], path) -> None:
    """One row per run (each seed), with its group's label: the table's cells are traceable."""
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["configuration", "seed", "run"] + [k for k, _, _, _, _ in GROUP_COLUMNS])
        for g in groups:
            for r in sorted(g.runs, key=seed_of):
                w.writerow([g.label, seed_of(r), str(r.path)] + [c[2](r) for c in GROUP_COLUMNS])
