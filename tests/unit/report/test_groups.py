"""Seeds of one configuration as a group; paired differences decide what is a difference."""
from __future__ import annotations

from pathlib import Path

import pytest

from fedmpi.report.groups import final, group_runs, paired
from fedmpi.report.runs import Run


def run(name: str, method: str, seed: int, acc: float) -> Run:
    return Run(Path(name), {"name": name, "final_accuracy": acc},
               {"name": name, "seed": seed, "method": {"name": method}, "output": {"dir": "x"}})


def test_groups_and_a_paired_interval():
    runs = [run(f"lora-s{s}", "lora", s, a) for s, a in ((0, 0.80), (1, 0.82), (2, 0.84))]
    runs += [run(f"full-s{s}", "full", s, a) for s, a in ((0, 0.70), (1, 0.73), (2, 0.75))]
    lora, full = group_runs(runs)
    assert (lora.label, full.label, lora.seeds) == ("lora", "full", [0, 1, 2])
    m, s, n = lora.mean_std(final("final_accuracy"))
    assert (m, n) == (pytest.approx(0.82), 3) and s == pytest.approx(0.02)
    p = paired(lora, full, final("final_accuracy"))
    # diffs 0.10, 0.09, 0.09: mean 0.0933, sd 0.00577, t(2)=4.303 -> half width 0.01434
    assert p.mean == pytest.approx(0.09333, abs=1e-4) and p.high - p.mean == pytest.approx(0.01434, abs=1e-4)
    assert p.significant
    noisy = [run(f"x-s{s}", "x", s, a) for s, a in ((0, 0.70), (1, 0.90), (2, 0.75))]
    q = paired(group_runs(noisy)[0], full, final("final_accuracy"))
    assert not q.significant and "not a difference" in q.text(100, " pt")
