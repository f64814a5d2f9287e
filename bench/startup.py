"""Where start-up and a round go: `fedmpi launch` from process start to the first
round, phase by phase, and one round's time on each rank, before and after issue 16.

Every process of the run is profiled by bench/probe/sitecustomize.py (first on
PYTHONPATH, FEDMPI_PROBE set): it wraps fedmpi's own functions as they are
imported and records when each starts and ends, so the same probe measures
any tree without changing it.

  python -m bench.startup [--reps N] [--rounds R] [--before REF]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from statistics import mean

from bench.common import (BEFORE_REF, COMPUTE_BOUND, ROOT, Section, fedmpi_cmd, median, run_measured, shown, table,
                          tree)

PROBE = ROOT / "bench" / "probe"


def read_probe(folder: Path) -> dict:
    """{'launcher': events, 'ranks': {rank: events}} with times from the launcher's birth."""
    procs = []
    for f in sorted(folder.glob("*.jsonl")):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if rows and rows[0]["phase"] == "born":
            procs.append(rows)
    launcher = next(p for p in procs if "launch" in p[0]["argv"] and p[0].get("rank") is None)
    t0 = launcher[0]["at"]
    shift = lambda p: [dict(r, t=r["t"] + p[0]["at"] - t0) for r in p]  # noqa: E731
    ranks = {int(p[0]["rank"]): shift(p) for p in procs if p[0].get("rank") is not None}
    return {"launcher": shift(launcher), "ranks": ranks}


def first(events: list[dict], phase: str) -> float | None:
    return next((e["t"] for e in events if e["phase"] == phase), None)


def spans(events: list[dict], label: str) -> list[tuple[float, float]]:
    """(start, end) of every call of a wrapped function."""
    out, open_at = [], []
    for e in events:
        if e["phase"] == f"{label}:start":
            open_at.append(e["t"])
        elif e["phase"] == f"{label}:end" and open_at:
            out.append((open_at.pop(), e["t"]))
    return out


def startup_phases(p: dict) -> dict[str, float]:
    """Start-up as a critical path: each milestone's time (seconds from the launcher's process
    start; a rank milestone is the slowest rank's) minus the previous one's. Milestones a tree
    does not have (the before tree has no gate, mpiexec runs have no forked model) are skipped."""
    L, R = p["launcher"], list(p["ranks"].values())

    def last_end(events, label):
        s = spans(events, label)
        return s[-1][1] if s else None

    def ranks(at):
        ts = [at(ev) for ev in R]
        return max(ts) if ts and all(t is not None for t in ts) else None

    milestones = [
        ("launcher: python + imports", first(L, "launch:start")),
        ("launcher: config", last_end(L, "config")),
        ("launcher: data, partition, checks (pre-flight)", last_end(L, "preflight")),
        ("launcher: token cache (hit: a lookup)", last_end(L, "fill_cache")),
        ("launcher: model, built once (forked ranks)", last_end(L, "prepare")),
        ("ranks started", ranks(lambda ev: ev[0]["t"])),
        ("ranks: python + imports", ranks(lambda ev: last_end(ev, "imports") or first(ev, "rank:start"))),
        ("ranks: waiting for the launcher's checks", ranks(lambda ev: last_end(ev, "gate"))),
        ("ranks: config, data, model (each rank)", ranks(lambda ev: last_end(ev, "prepare"))),
        ("ranks: process group", ranks(lambda ev: last_end(ev, "init_runtime"))),
        ("ranks: engine build, setup to round 0", ranks(lambda ev: first(ev, "round:start"))),
    ]
    out: dict[str, float] = {}
    prev = 0.0
    for name, at in milestones:
        if at is None:
            continue
        out[name] = max(0.0, at - prev)
        prev = max(prev, at)
    out["total: launch to round 0"] = prev
    ends = [e["t"] for ev in R for e in ev if e["phase"] == "round:end"]
    exit_t = first(L, "exit")
    if ends and exit_t:
        out["after the last round: last evaluation, summary, exit"] = exit_t - max(ends)
    return out


def round_profile(p: dict, skip: int = 1) -> dict[str, float]:
    """Mean seconds per round (after the first `skip`): each client rank's local training, its
    wait in the aggregation collective, and the server's evaluation and wait."""
    out: dict[str, float] = {}
    per_round = []
    for rank, ev in sorted(p["ranks"].items()):
        rounds = spans(ev, "round")[skip:]
        if not rounds:
            continue
        lo, hi = rounds[0][0], rounds[-1][1]
        n = len(rounds)
        inside = lambda label: sum(b - a for a, b in spans(ev, label) if lo <= a <= hi) / n  # noqa: E731
        per_round.append((hi - lo) / n)
        if rank == 0:
            out["server: evaluation"] = inside("evaluate")
            out["server: waiting for updates (aggregation)"] = inside("finish")
        else:
            out[f"rank {rank}: local training"] = inside("client")
            out[f"rank {rank}: waiting in aggregation"] = inside("finish")
    out["round (wall)"] = mean(per_round) if per_round else float("nan")
    return out


def bench(reps: int = 2, rounds: int = 4, before: str | None = None, ranks: int = 3,
          extra: tuple[str, ...] = ()) -> Section:
    before = BEFORE_REF if before is None else (None if before in ("", "none") else before)
    trees = {"after": tree(None)}
    if before:
        trees["before"] = tree(before)
    tmp = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    sets = (*COMPUTE_BOUND, *extra, f"federation.rounds={rounds}")
    got: dict[str, list[dict]] = defaultdict(list)
    walls: dict[str, list[float]] = defaultdict(list)
    cmd = None
    for rep in range(reps):
        for tag in (list(trees) if rep % 2 == 0 else list(trees)[::-1]):
            probe = tmp / f"probe-{tag}{rep}"
            cmd = fedmpi_cmd(ranks, tmp, f"{tag}{rep}", *sets)
            m = run_measured(cmd, cwd=trees[tag], extra_env={
                "FEDMPI_PROBE": str(probe), "PYTHONPATH": f"{PROBE}:{trees[tag]}"}).check()
            walls[tag].append(m.wall)
            got[tag].append(read_probe(probe))
    tags = list(trees)
    phase_rows, round_rows = [], []
    phases = {t: [startup_phases(p) for p in got[t]] for t in tags}
    rounds_ = {t: [round_profile(p) for p in got[t]] for t in tags}
    names = list(dict.fromkeys(n for t in tags for ph in phases[t] for n in ph))
    names.remove("total: launch to round 0")
    names.insert(len(names) - 1, "total: launch to round 0")
    for name in names:
        phase_rows.append([name, *[median([ph[name] for ph in phases[t] if name in ph]) if any(
            name in ph for ph in phases[t]) else "—" for t in tags]])
    for name in list(dict.fromkeys(n for t in tags for r in rounds_[t] for n in r)):
        round_rows.append([name, *[median([r[name] for r in rounds_[t] if name in r]) if any(
            name in r for r in rounds_[t]) else "—" for t in tags]])
    figures = {f"startup_{t}": median([ph["total: launch to round 0"] for ph in phases[t]]) for t in tags}
    body = (f"The compute-bound workload (bench.common.COMPUTE_BOUND{', ' + ', '.join(extra) if extra else ''}), "
            f"{rounds} rounds, `fedmpi launch -n {ranks}`; median of {reps} interleaved runs per tree. Times are "
            "seconds from the launcher's process start; a rank phase is the slowest rank's (they run "
            f"concurrently on this machine's cores). `before` is {before or '—'}.\n\n"
            "**Start-up, phase by phase**\n\n" + table(["phase", *tags], phase_rows)
            + "\n\n**One round (mean over rounds 1..; the first round also pays one-off FLOP counts)**\n\n"
            + table(["where", *tags], round_rows))
    return Section("Start-up and a round, phase by phase", body, figures, [shown(cmd)])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--before", default=None)
    ap.add_argument("--set", dest="extra", action="append", default=[])
    a = ap.parse_args()
    print(bench(a.reps, a.rounds, a.before, extra=tuple(a.extra)).markdown())
