"""Link emulation accuracy: one client rank sends to the server through the
Link's point-to-point calls (to_server / from_client). In `realtime` mode the
measured time (client's send start to the server's return, one host clock)
should be latency + bytes*8/bandwidth within +-5%; in `virtual` mode the
ledger's seconds must equal that formula exactly (and nobody sleeps).

  python -m bench.link_accuracy [--quick] [--reps N]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import Section, median, mpi_cmd, run_measured, shown, table

LATENCY_MS = 20.0
FULL = ["1@10", "10@10", "100@10", "1@100", "10@100", "100@100", "1@1000", "10@1000", "100@1000"]
QUICK = ["1@10", "10@100", "1@100", "1@1000", "10@1000", "100@1000"]


def bench(pairs: list[str] = FULL, reps: int = 1) -> Section:
    out = Path(tempfile.mkdtemp(prefix="bench_link_")) / "link.json"
    cmd = mpi_cmd(2, "bench.worker", "link", str(out), str(LATENCY_MS), str(reps), *pairs)
    run_measured(cmd, timeout=1200).check()
    rows = json.loads(out.read_text())["rows"]
    table_rows, worst, exact = [], 0.0, True
    for pair in pairs:
        mb, mbps = (float(x) for x in pair.split("@"))
        rt = [r for r in rows if r["mb"] == mb and r["mbps"] == mbps and r["clock"] == "realtime"]
        vt = [r for r in rows if r["mb"] == mb and r["mbps"] == mbps and r["clock"] == "virtual"]
        expected = rt[0]["expected_s"]
        measured = median([r["measured_s"] for r in rt])
        err = measured / expected - 1
        worst = max(worst, abs(err))
        ok_virtual = all(r["ledger_s"] == r["formula_s"] == r["expected_s"] and r["ledger_bytes"] == r["bytes"]
                         for r in rt + vt)
        exact &= ok_virtual
        table_rows.append([f"{mb:g}", f"{mbps:g}", expected, measured, f"{err * 100:+.2f}%",
                           median([r["measured_s"] for r in vt]), "exact" if ok_virtual else "MISMATCH"])
    body = (f"Latency {LATENCY_MS:g} ms, 2 ranks (server + one client rank), gloo on CPU; median of {reps} "
            "transfer(s) per size. `virtual wall` is the same transfer under the virtual clock: the real "
            "transport time, which the realtime clock cannot go below.\n\n"
            + table(["MB", "Mbit/s", "expected s", "realtime measured s", "error", "virtual wall s",
                     "virtual ledger s == formula"], table_rows)
            + f"\n\n**Realtime worst |error| = {worst * 100:.2f}%** (target ±5%); virtual mode exact "
            f"(ledger seconds == latency + bytes·8/bandwidth, bytes == numel·element size): {exact}.")
    return Section("Link emulation accuracy", body, {"link_worst_error": worst, "virtual_exact": exact},
                   [shown(cmd)])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the 8 s and 80 s transfers at 10 Mbit/s")
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    print(bench(QUICK if a.quick else FULL, a.reps).markdown())
