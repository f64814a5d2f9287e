"""Instrumentation overhead: the same FedAvg rounds with fedmpi's Link
accounting, Ledger and FLOP meter vs with all three bypassed (a Link that
only calls torch.distributed, a disabled meter, a ledger that keeps nothing;
see bench/worker.py). Fresh jobs, interleaved. Target <= 1.05x.

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


def bench(reps: int = 4, rounds: int = 10, ranks: int = 3) -> Section:
    tmp = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    res: dict[str, list[dict]] = {"instrumented": [], "bypassed": []}
    cmds = []
    for rep in range(reps):
        for mode in (("instrumented", "bypassed") if rep % 2 == 0 else ("bypassed", "instrumented")):
            out = tmp / f"{mode}{rep}.json"
            sets = [*SETS, f"federation.rounds={rounds}", f"output.dir={tmp}", f"name={mode}{rep}"]
            cmd = mpi_cmd(ranks, "bench.worker", "fedmpi", str(out), mode, str(TINY), *sets)
            run_measured(cmd).check()
            res[mode].append(json.loads(out.read_text()))
            if rep == 0:
                cmds.append(shown(cmd))
    med = {m: {k: median([r[k] for r in rs]) for k in ("run_s", "rounds_s")} for m, rs in res.items()}
    ratio_run = med["instrumented"]["run_s"] / med["bypassed"]["run_s"]
    ratio_rounds = med["instrumented"]["rounds_s"] / med["bypassed"]["rounds_s"]
    pairs = [a["run_s"] / b["run_s"] for a, b in zip(res["instrumented"], res["bypassed"])]
    same = all(a["final_loss"] == b["final_loss"] and a["final_accuracy"] == b["final_accuracy"]
               for a, b in zip(res["instrumented"], res["bypassed"]))
    rows = [[m, med[m]["run_s"], med[m]["rounds_s"], res[m][0]["final_loss"], res[m][0]["counted_calls"]]
            for m in ("instrumented", "bypassed")]
    body = (f"Tiny BERT, 50 clients, 10 per round, 3 local steps, {rounds} rounds, eval every 5, {ranks} ranks; "
            f"`Experiment.run` timed inside the job (set-up and the process start excluded), median of {reps} "
            "interleaved fresh jobs. `rounds` sums the per-round wall times of metrics.jsonl.\n\n"
            + table(["mode", "Experiment.run s", "rounds s", "final loss", "FLOP counts taken (all ranks)"], rows)
            + f"\n\n**instrumented / bypassed = {ratio_run:.3f}×** over `Experiment.run` "
            f"({ratio_rounds:.3f}× over the rounds alone; target ≤ 1.05×). "
            f"Per repetition (instrumented ran first in odd-numbered repetitions): "
            + ", ".join(f"{r:.2f}×" for r in pairs) + ". "
            f"Same loss and accuracy in both modes: {same}. The FLOP meter counts each distinct batch shape "
            "once, running that step under torch's FlopCounterMode (several times slower than a plain step); "
            "the count is cached, so this cost is per shape, not per round, and shrinks as runs get longer.")
    return Section("Instrumentation overhead (Link + Ledger + FLOP meter)", body,
                   {"overhead_ratio": ratio_run, "overhead_pairs": pairs, "overhead_ratio_rounds": ratio_rounds, "same_results": same}, cmds)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    print(bench(a.reps, a.rounds).markdown())
