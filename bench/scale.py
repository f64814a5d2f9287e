"""Scale: 1000 virtual clients vs 100, the same clients per round, 4 ranks:
rounds per second and peak memory per rank (summary.json's
peak_memory_bytes, max RSS). Target: memory flat, 1000/100 <= 1.1x.

  python -m bench.scale [--reps N] [--rounds R] [--per-round K]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import Section, fedmpi_cmd, median, mib, read_run, run_measured, shown, table

SETS = ("model.name=tiny-bert", "model.max_length=32", "data.name=embedded", "data.max_train_samples=null",
        "train.local_steps=2", "train.batch_size=16", "federation.eval_every=1000")


def bench(reps: int = 2, rounds: int = 20, per_round: int = 30, ranks: int = 4) -> Section:
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    res: dict[int, list[dict]] = {100: [], 1000: []}
    cmds = []
    for rep in range(reps):
        for n in ((100, 1000) if rep % 2 == 0 else (1000, 100)):
            cmd = fedmpi_cmd(ranks, tmp, f"c{n}_{rep}", *SETS, f"federation.num_clients={n}",
                             f"federation.clients_per_round={per_round}", f"federation.rounds={rounds}")
            m = run_measured(cmd).check()
            run = read_run(tmp / f"c{n}_{rep}")
            loop = sum(r["wall_seconds"] for r in run["metrics"])
            res[n].append({"wall": m.wall, "rps": rounds / loop, "peaks": run["summary"]["peak_memory_bytes"],
                           "tree_peak": m.peak_rss})
            if rep == 0:
                cmds.append(shown(cmd))
    rows, peak = [], {}
    for n in (100, 1000):
        peaks = [max(r["peaks"][k] for r in res[n]) for k in range(ranks)]
        peak[n] = peaks
        rows.append([n, per_round, median([r["rps"] for r in res[n]]), median([r["wall"] for r in res[n]]),
                     " / ".join(mib(p) for p in peaks), mib(median([r["tree_peak"] for r in res[n]]))])
    ratios = [peak[1000][k] / peak[100][k] for k in range(ranks)]
    body = (f"Tiny BERT, {per_round} clients per round, 2 local steps, {rounds} rounds, {ranks} ranks "
            f"(server + {ranks - 1} client ranks); median of {reps} interleaved runs. Rounds/s over the "
            "round loop (metrics.jsonl wall_seconds); wall includes start-up.\n\n"
            + table(["clients", "per round", "rounds/s", "wall s", "peak RSS per rank (0 / 1 / ...)",
                     "peak RSS all processes"], rows)
            + f"\n\n**Peak memory per rank, 1000 / 100 clients: "
            + ", ".join(f"rank {k} {r:.3f}×" for k, r in enumerate(ratios))
            + f" (max {max(ratios):.3f}×; target ≤ 1.1×).**")
    return Section("Scale: 1000 virtual clients", body,
                   {"scale_mem_ratio_max": max(ratios),
                    "rps_100": median([r["rps"] for r in res[100]]),
                    "rps_1000": median([r["rps"] for r in res[1000]])}, cmds)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=30)
    a = ap.parse_args()
    print(bench(a.reps, a.rounds, a.per_round).markdown())
