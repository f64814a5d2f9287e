"""Instrumentation overhead: the same FedAvg rounds with fedmpi's Link
accounting, Ledger and FLOP meter vs with all three bypassed (a Link that
only calls torch.distributed, a disabled meter, a ledger that keeps nothing;
see bench/worker.py), alternating inside one job. Target <= 1.05x.

  python -m bench.overhead [--reps N] [--rounds R]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import TINY, Section, median, mpi_cmd, run_measured, shown, table

SETS = ("model.name=tiny-bert", "data.name=embedded", "data.max_train_samples=null", "federation.num_clients=50",
        "federation.clients_per_round=10", "train.local_steps=3", "train.batch_size=16",
        "federation.eval_every=5", "output.progress=false")


def bench(reps: int = 6, rounds: int = 10, ranks: int = 3) -> Section:
    tmp = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    out = tmp / "overhead.json"
    sets = [*SETS, f"federation.rounds={rounds}", f"output.dir={tmp}"]
    cmd = mpi_cmd(ranks, "bench.worker", "overhead", str(out), str(reps), str(TINY), *sets)
    run_measured(cmd, timeout=1800).check()
    runs = json.loads(out.read_text())["runs"]
    by = {m: [r for r in runs if r["mode"] == m] for m in ("instrumented", "bypassed")}
    med = {m: median([r["run_s"] for r in rs]) for m, rs in by.items()}
    ratio = med["instrumented"] / med["bypassed"]
    pairs = [a["run_s"] / b["run_s"] for a, b in zip(by["instrumented"], by["bypassed"])]
    same = all(a["final_loss"] == b["final_loss"] and a["final_accuracy"] == b["final_accuracy"]
               for a, b in zip(by["instrumented"], by["bypassed"]))
    rows = [[m, med[m], min(r["run_s"] for r in by[m]), max(r["run_s"] for r in by[m]), by[m][0]["final_loss"],
             by[m][0]["counted_calls"]] for m in ("instrumented", "bypassed")]
    body = (f"Tiny BERT, 50 clients, 10 per round, 3 local steps, {rounds} rounds, eval every 5, {ranks} ranks. "
            f"Both modes alternate inside **one** job ({reps} timed pairs after one untimed warm-up pair, the "
            "order swapped every pair), each run a fresh `Experiment` from the same initial weights with a "
            "fresh FLOP meter, so every instrumented run pays its own per-shape FLOP counts; timed is "
            "`Experiment.run`, the slowest rank's. Fresh jobs per run (this benchmark's first design) "
            "measured mostly process-start and machine drift: ±10% from run to run, and the second job of a "
            "pair ran ~10% slower whatever its mode.\n\n"
            + table(["mode", "median s", "min s", "max s", "final loss", "FLOP counts per run (all ranks)"], rows)
            + f"\n\n**instrumented / bypassed = {ratio:.3f}×** (median over median; target ≤ 1.05×). "
            "Per pair: " + ", ".join(f"{r:.2f}×" for r in pairs) + ". "
            f"Same loss and accuracy in both modes: {same}. Not in the timing: the one-off first use of "
            "torch's FlopCounterMode in a process (the warm-up pair), like the imports.")
    return Section("Instrumentation overhead (Link + Ledger + FLOP meter)", body,
                   {"overhead_ratio": ratio, "overhead_pairs": pairs, "same_results": same}, [shown(cmd)])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    print(bench(a.reps, a.rounds).markdown())
