"""``fedmpi report RUNS_DIR... [--out DIR]``: one table and a few plots over many runs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedmpi.report import groups, plots, table
from fedmpi.report.runs import ReportError, Run, load_runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedmpi report",
                                description="Gather run folders into report.md, report.csv and PNG plots.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUNS_DIR",
                   help="a run folder, or a folder holding run folders (searched recursively)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: FIRST_RUNS_DIR/report)")
    p.add_argument("--recost", action="append", default=[], metavar="KEY=VALUE",
                   help="re-price the runs under other links or devices (network.* / compute.* keys, repeatable), "
                        "e.g. --recost network.profile=mobile")
    return p


def write_report(runs: list[Run], out: Path, recost: list[str] | None = None) -> list[Path]:
    """Write report.csv, report.md and the figures into ``out``; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    figures = plots.write_all(runs, out)
    table.write_csv(runs, out / "report.csv")
    lines = [f"# fedmpi report: {len(runs)} run{'s' if len(runs) != 1 else ''}", ""]
    if recost:
        lines += [f"Re-priced under {', '.join(f'`{r}`' for r in recost)}: the same traffic and work, "
                  "emulated times from those links and devices (bytes and FLOPs unchanged).", ""]
    lines += [table.markdown(runs), ""]
    grouped = groups.group_runs(runs)
    if any(len(g.runs) > 1 for g in grouped):  # seeds of one configuration: mean ± std, bands
        groups.write_csv(grouped, out / "groups.csv")
        figures += [plots.accuracy_bands(grouped, "bytes", out / "accuracy_bands_vs_bytes.png"),
                    plots.accuracy_bands(grouped, "time", out / "accuracy_bands_vs_time.png")]
        lines += ["## Over seeds", "", "Mean ± std over the seeds of each configuration (each seed's value is in "
                  "groups.csv).", "", groups.markdown(grouped), ""]
    lines += ["Run folders:", ""]
    lines += [f"- `{run.name}`: {run.path}" for run in runs]
    lines += ["", "## Figures", ""]
    lines += [f"![{f.stem.replace('_', ' ')}]({f.name})" for f in figures]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return [out / "report.md", out / "report.csv", *figures]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or args.runs[0] / "report"
    try:
        runs = load_runs(args.runs)
        if args.recost:
            from fedmpi.report.recost import parse, recost

            overrides = parse(args.recost)
            runs = [recost(run, overrides) for run in runs]
        files = write_report(runs, out, recost=args.recost)
    except ReportError as exc:
        print(f"fedmpi report: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fedmpi report: cannot write to {out}: {exc}", file=sys.stderr)
        return 2
    print(f"fedmpi report: {len(runs)} runs -> {out} ({len(files)} files: report.md, report.csv, "
          f"{len(files) - 2} figures)")
    return 0
