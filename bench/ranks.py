"""Rank scaling: the same experiment on 2, 3, 5 and 9 ranks: wall time per
round, and metrics that must be identical (results never depend on how
clients are packed into ranks).

  python -m bench.ranks [--rounds R] [--ranks 2,3,5,9]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import Section, fedmpi_cmd, mib, read_run, run_measured, shown, table

SETS = ("model.name=tiny-bert", "data.name=embedded", "data.max_train_samples=null", "federation.num_clients=40",
        "federation.clients_per_round=8", "train.local_steps=3", "train.batch_size=16",
        "federation.eval_every=2", "network.heterogeneity=0.5", "compute.heterogeneity=0.3",
        "data.partition=dirichlet")
VOLATILE = {"wall_seconds", "transport_bytes"}  # the machine's time, the cluster's own transport


def bench(ranks: tuple[int, ...] = (2, 3, 5, 9), rounds: int = 6) -> Section:
    tmp = Path(tempfile.mkdtemp(prefix="bench_ranks_"))
    runs, cmds = {}, []
    for r in ranks:
        cmd = fedmpi_cmd(r, tmp, f"r{r}", *SETS, f"federation.rounds={rounds}")
        m = run_measured(cmd).check()
        runs[r] = (m, read_run(tmp / f"r{r}"))
        cmds.append(shown(cmd))
    strip = lambda rows: [{k: v for k, v in x.items() if k not in VOLATILE} for x in rows]
    ref = strip(runs[ranks[0]][1]["metrics"])
    rows = []
    for r, (m, run) in runs.items():
        per_round = sum(x["wall_seconds"] for x in run["metrics"]) / rounds
        s = run["summary"]
        rows.append([r, m.wall, per_round, s["final_loss"], s["final_accuracy"], s["total_bytes_up"],
                     strip(run["metrics"]) == ref, mib(m.peak_rss)])
    same = all(x[6] for x in rows)
    body = (f"Tiny BERT, 40 clients (Dirichlet partition), 8 per round, 3 local steps, {rounds} rounds, "
            "heterogeneous links and devices; one run per rank count on this 2-core machine (more ranks than "
            "cores: wall per round shows the cost of oversubscription here, not cluster scaling).\n\n"
            + table(["ranks", "wall s", "s / round", "final loss", "final accuracy", "bytes up",
                     "metrics identical", "peak PSS all processes"], rows)
            + f"\n\n**Metrics (every field but wall_seconds / transport_bytes) identical on {', '.join(map(str, ranks))}"
            f" ranks: {same}.**")
    return Section("Rank scaling", body, {"ranks_identical": same,
                                          "s_per_round": {r: x[2] for r, x in zip(ranks, rows)}}, cmds)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--ranks", default="2,3,5,9")
    a = ap.parse_args()
    print(bench(tuple(int(x) for x in a.ranks.split(",")), a.rounds).markdown())
