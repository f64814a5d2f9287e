"""Run every benchmark and write docs/benchmarks.md (tables, the machine, the
commands). The document is rewritten after each benchmark, so an interrupted
run keeps what finished. Sized for < 20 minutes on an idle 2-core machine;
--quick shrinks everything for a loaded one.

  python -m bench.run_all [--quick] [--only link,aggregation,overhead,scale,ranks,flower] [--out docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from bench.common import ROOT, Section, machine, table

SIZES = {
    # name: (full kwargs, quick kwargs)
    "link": ({}, {"pairs": None}),
    "aggregation": ({"reps": 5}, {"reps": 3}),
    "overhead": ({"reps": 6, "rounds": 10}, {"reps": 2, "rounds": 5}),  # even: balanced run order
    "scale": ({"reps": 2, "rounds": 20, "per_round": 30}, {"reps": 1, "rounds": 8, "per_round": 20}),
    "ranks": ({"rounds": 6}, {"rounds": 3}),
    "flower": ({"reps": 1, "compute_rounds": 20, "overhead_rounds": 20},
               {"reps": 1, "compute_rounds": 3, "overhead_rounds": 5}),
}


def _run(name: str, kwargs: dict) -> Section:
    if name == "link":
        from bench import link_accuracy

        if "pairs" in kwargs:
            return link_accuracy.bench(link_accuracy.QUICK, 1)
        return link_accuracy.bench(link_accuracy.FULL, 1)
    if name == "aggregation":
        from bench import aggregation

        return aggregation.bench(**kwargs)
    if name == "overhead":
        from bench import overhead

        return overhead.bench(**kwargs)
    if name == "scale":
        from bench import scale

        return scale.bench(**kwargs)
    if name == "ranks":
        from bench import ranks

        return ranks.bench(**kwargs)
    if name == "flower":
        from bench import flower

        return flower.bench(**kwargs)
    raise SystemExit(f"unknown benchmark {name}")


def _headline(figs: dict) -> list[list]:
    rows = []

    def add(what, key, target, fmt="{:.3f}×", ok=None):
        if key in figs and figs[key] is not None:
            v = figs[key]
            good = ok(v) if ok else None
            rows.append([what, fmt.format(v), target, "—" if good is None else ("yes" if good else "**no**")])

    add("instrumentation overhead (Experiment.run)", "overhead_ratio", "≤ 1.05×", ok=lambda v: v <= 1.05)
    add("aggregation float64 (default) / raw all_reduce", "agg_ratio_f64", "≤ 1.2×", ok=lambda v: v <= 1.2)
    add("aggregation float32 / raw all_reduce", "agg_ratio_f32", "≤ 1.2×", ok=lambda v: v <= 1.2)
    add("fedmpi / plain loop (compute-bound, wall)", "plain_ratio", "≤ 1.25×", ok=lambda v: v <= 1.25)
    add("final weights fedmpi vs plain loop, max abs diff", "plain_max_abs_diff", "to rounding", "{:.3g}",
        ok=lambda v: v < 1e-5)
    add("Flower / plain loop (compute-bound, wall)", "flower_plain_ratio", "> fedmpi's ratio",
        ok=lambda v: "plain_ratio" in figs and v > figs["plain_ratio"])
    add("fedmpi rounds/s ÷ Flower's (overhead-bound)", "overhead-bound_fedmpi_rps_over_flower", "≥ 5×",
        "{:.2f}×", ok=lambda v: v >= 5)
    add("peak memory per rank, 1000 / 100 clients (worst rank)", "scale_mem_ratio_max", "≤ 1.1×",
        ok=lambda v: v <= 1.1)
    add("metrics identical on 2, 3, 5, 9 ranks", "ranks_identical", "identical", "{}", ok=bool)
    add("realtime link: worst abs error", "link_worst_error", "±5%", "{:.2%}", ok=lambda v: v <= 0.05)
    add("virtual link: ledger == formula", "virtual_exact", "exact", "{}", ok=bool)
    return rows


def write(out: Path, sections: list[Section], started: str, args: argparse.Namespace, elapsed: float,
          failed: dict[str, str], mach: dict) -> None:
    figs: dict = {}
    for s in sections:
        figs.update(s.figures)
    cmd = "python -m bench.run_all" + (" --quick" if args.quick else "") + (
        f" --only {args.only}" if args.only else "")
    parts = [
        "# Benchmarks\n",
        "Written by `bench/run_all.py`; every ratio below was measured side by side in one run "
        "(runs interleaved), never as timed assertions in the test suite. These machines are shared and "
        "noisy: compare ratios, not absolute seconds.\n",
        f"Command: `{cmd}` (started {started}, {elapsed / 60:.1f} min). Each benchmark also runs on its own: "
        "`python -m bench.<name> --help`. Flower is the optional extra `pip install -c constraints.txt "
        "-e '.[bench]'` (flwr[simulation] with Ray; torch stays the pinned CPU build).\n",
        "## Machine\n",
        table(["", ""], [[k, v] for k, v in mach.items()]) + "\n",
        "## Headline figures\n",
        table(["figure", "measured", "target", "met"], _headline(figs)) + "\n",
    ]
    if failed:
        parts.append("## Not measured in this run\n\n" + "\n".join(f"- {k}: {v}" for k, v in failed.items())
                     + "\n")
    parts += [s.markdown() for s in sections]
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        parts.append(notes.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    (out.with_suffix(".json")).write_text(json.dumps(
        {"figures": figs, "machine": mach, "sections": [dict(vars(s), name=getattr(s, "name", s.title))
                                                        for s in sections]}, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a loaded machine")
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(SIZES))
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--keep", action="store_true",
                    help="keep the other benchmarks' sections from the previous run's OUT .json (re-run a few)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SIZES)
    mach = machine()
    mach["load (1/5/15 min)"] += " (at the start)"
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    sections: list[Section] = []
    failed: dict[str, str] = {}
    kept: dict[str, Section] = {}
    side = Path(args.out).with_suffix(".json")
    if args.keep and side.exists():
        for d in json.loads(side.read_text()).get("sections", []):
            if d["name"] not in names:
                kept[d["name"]] = Section(d["title"], d["body"], d["figures"], d["commands"])
                kept[d["name"]].name = d["name"]
    for name in names:
        kwargs = SIZES[name][1 if args.quick else 0]
        t = time.perf_counter()
        print(f"[run_all] {name} {kwargs} ...", flush=True)
        try:
            sec = _run(name, kwargs)
            sec.body += (f"\n\n_(this benchmark took {time.perf_counter() - t:.0f} s; sizes {kwargs}, "
                         f"{'--quick' if args.quick else 'full'})_")
            sec.name = name
            sections.append(sec)
            print(sec.markdown(), flush=True)
        except Exception as exc:  # keep going: one failure must not lose the rest
            failed[name] = f"{type(exc).__name__}: {str(exc)[-800:]}"
            traceback.print_exc()
        mach["load (1/5/15 min) after the last benchmark"] = machine()["load (1/5/15 min)"]
        order = list(SIZES)
        everything = sorted([*sections, *kept.values()], key=lambda x: order.index(x.name))
        write(Path(args.out), everything, started, args, time.perf_counter() - t0, failed, mach)
    print(f"[run_all] wrote {args.out} in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
