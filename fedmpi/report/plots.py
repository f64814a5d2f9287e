"""PNG figures from run folders.

Uses matplotlib's object API with the Agg canvas (no pyplot): no display is
needed and no global figure state leaks between calls, so reports can be made
on headless cluster nodes and inside tests.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedmpi.report.runs import Run

_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"))


def byte_unit(largest: float) -> tuple[float, str]:
    """The unit that keeps numbers readable (decimal, like link speeds)."""
    for scale, label in _UNITS:
        if largest >= scale:
            return scale, label
    return 1.0, "B"


def _figure(width: float = 7.0, height: float = 4.5) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path)
    return path


def _accuracy_curve(run: Run, x_of: str) -> tuple[list[float], list[float]]:
    """Cumulative x (bytes or emulated seconds) at each evaluated round's end."""
    xs, ys, total = [], [], 0.0
    for m in run.metrics:
        if x_of == "bytes":
            total += (m.get("bytes_up") or 0) + (m.get("bytes_down") or 0)
        else:
            total += m.get("emulated_seconds") or 0.0
        if m.get("accuracy") is not None:
            xs.append(total)
            ys.append(float(m["accuracy"]))
    return xs, ys


def accuracy_vs(runs: list[Run], x_of: str, path: Path) -> Path:
    """Accuracy against cumulative traffic (``x_of="bytes"``) or emulated time (``"time"``)."""
    fig, ax = _figure()
    curves = {run.name: _accuracy_curve(run, x_of) for run in runs}
    if x_of == "bytes":
        largest = max((xs[-1] for xs, _ in curves.values() if xs), default=0.0)
        scale, unit = byte_unit(largest)
        ax.set_xlabel(f"cumulative traffic, up + down ({unit})")
        ax.set_title("Accuracy vs communication")
    else:
        scale, unit = 1.0, "s"
        ax.set_xlabel("cumulative emulated time (s)")
        ax.set_title("Accuracy vs emulated wall-clock time")
    plotted = 0
    for name, (xs, ys) in curves.items():
        if xs:
            ax.plot([x / scale for x in xs], ys, marker="o", markersize=3, label=name)
            plotted += 1
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ends = [xs[-1] for xs, _ in curves.values() if xs and xs[-1] > 0]
    if ends and max(ends) / min(ends) > 100:  # e.g. LoRA vs full fine-tuning: 1000x apart
        ax.set_xscale("log")
        ax.set_xlabel(ax.get_xlabel() + ", log scale")
    if plotted:
        ax.legend(fontsize="small")
    else:
        _empty(ax, "no evaluated rounds")
    return _save(fig, path)


def accuracy_bands(groups, x_of: str, path: Path) -> Path:
    """Mean accuracy over seeds against cumulative bytes or emulated time (log x), the
    band spanning the seeds' min and max at each evaluated round."""
    import numpy as np

    fig, ax = _figure()
    plotted = 0
    for g in groups:
        curves = [_accuracy_curve(r, x_of) for r in g.runs]
        curves = [c for c in curves if c[0]]
        if not curves:
            continue
        k = min(len(c[0]) for c in curves)
        xs = np.mean([c[0][:k] for c in curves], axis=0)
        ys = np.array([c[1][:k] for c in curves])
        scale = 1e6 if x_of == "bytes" else 1.0
        line, = ax.plot(xs / scale, ys.mean(0), marker="o", markersize=3, label=f"{g.label} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(xs / scale, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
        plotted += 1
    ax.set_xlabel("cumulative traffic, up + down (MB), log scale" if x_of == "bytes"
                  else "cumulative emulated time (s), log scale")
    ax.set_ylabel("test accuracy (mean over seeds; band: min–max)")
    ax.set_title("Accuracy vs communication" if x_of == "bytes" else "Accuracy vs emulated time")
    if plotted:
        ax.set_xscale("log")
        ax.legend(fontsize="x-small")
    else:
        _empty(ax, "no evaluated rounds")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def _bytes_by_kind(run: Run) -> dict[int, dict[str, int]]:
    per_round: dict[int, dict[str, int]] = {}
    for m in run.metrics:
        if isinstance(m.get("bytes_by_kind"), dict):
            per_round[int(m.get("round", len(per_round)))] = {k: int(v or 0) for k, v in m["bytes_by_kind"].items()}
    if per_round or not run.ledger:
        return per_round
    table: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in run.ledger:  # older runs: rebuild from the ledger
        if row.get("bytes"):
            table[int(row.get("round", 0))][str(row.get("kind", "?"))] += int(row["bytes"])
    return {r: dict(k) for r, k in table.items()}


def kind_colors(runs: list[Run]) -> dict[str, str]:
    """One colour per message kind across all figures, so 'model' looks the same everywhere."""
    kinds = sorted({k for run in runs for per in _bytes_by_kind(run).values() for k in per})
    palette = [f"C{i}" for i in range(10)] + [f"tab:{c}" for c in ("olive", "cyan", "pink", "gray")]
    return {k: palette[i % len(palette)] for i, k in enumerate(kinds)}


def bytes_by_kind(run: Run, path: Path, colors: dict[str, str] | None = None) -> Path:
    """Stacked bars: what each round's traffic was made of (biggest kind at the bottom)."""
    fig, ax = _figure()
    per_round = _bytes_by_kind(run)
    rounds = sorted(per_round)
    kinds = sorted({k for r in rounds for k in per_round[r]},
                   key=lambda k: (-sum(per_round[r].get(k, 0) for r in rounds), k))
    largest = max((sum(per_round[r].values()) for r in rounds), default=0)
    scale, unit = byte_unit(largest)
    bottom = [0.0] * len(rounds)
    for kind in kinds:
        heights = [per_round[r].get(kind, 0) / scale for r in rounds]
        ax.bar(rounds, heights, bottom=bottom, label=kind, color=(colors or {}).get(kind))
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_title(f"Traffic per round by message kind — {run.name}")
    ax.set_xlabel("round")
    ax.set_ylabel(f"bytes sent, up + down ({unit})")
    ax.grid(axis="y", alpha=0.3)
    if kinds:
        handles, labels = ax.get_legend_handles_labels()  # top of the legend = top of the stack
        ax.legend(handles[::-1], labels[::-1], title="kind", fontsize="small", loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
        if len(rounds) <= 30:
            ax.set_xticks(rounds)
    else:
        _empty(ax, "no traffic recorded")
    return _save(fig, path)


def client_bytes(run: Run, path: Path) -> Path:
    """Grouped bars per client: uplink vs downlink bytes over the whole run."""
    up: dict[int, int] = defaultdict(int)
    down: dict[int, int] = defaultdict(int)
    for row in run.ledger:
        client = int(row.get("client", -1))
        if client < 0:
            continue
        if row.get("direction") == "up":
            up[client] += int(row.get("bytes") or 0)
        elif row.get("direction") == "down":
            down[client] += int(row.get("bytes") or 0)
    clients = sorted(set(up) | set(down))
    fig, ax = _figure(width=max(7.0, min(20.0, 0.35 * len(clients))))
    scale, unit = byte_unit(max([*up.values(), *down.values(), 0]))
    width = 0.4
    ax.bar([c - width / 2 for c in clients], [up[c] / scale for c in clients], width, label="up (client → server)")
    ax.bar([c + width / 2 for c in clients], [down[c] / scale for c in clients], width,
           label="down (server → client)")
    ax.set_title(f"Traffic per client over the run — {run.name}")
    ax.set_xlabel("client id")
    ax.set_ylabel(f"bytes ({unit})")
    ax.grid(axis="y", alpha=0.3)
    if clients:
        ax.legend(fontsize="small")
        if len(clients) <= 40:
            ax.set_xticks(clients)
    else:
        _empty(ax, "no per-client traffic in ledger.jsonl")
    return _save(fig, path)


def round_timeline(run: Run, rnd: int) -> tuple[dict[int, list[tuple[str, float, float]]], float, int | None]:
    """Per client of round `rnd`: (phase, start, duration) on the emulated clock, in the
    engine's order — downloads, then compute and split-learning messages as they came,
    then the upload — the server's own work after the slowest client; and who that was."""
    rows = [r for r in run.ledger if int(r.get("round", -1)) == rnd]
    bars: dict[int, list[tuple[str, float, float]]] = defaultdict(list)
    clock: dict[int, float] = defaultdict(float)
    server = 0.0
    ups = {int(r["client"]) for r in rows if r.get("direction") == "up" and r.get("kind") in ("update", "control")}
    for r in rows:
        c, d, secs = int(r.get("client", -1)), r.get("direction"), float(r.get("seconds") or 0.0)
        if d == "server":
            server += secs
            continue
        if d == "up" and r.get("kind") in ("update", "control"):
            phase = "upload"
        elif d == "down" and r.get("kind") in ("model", "control", "init", "stats"):
            phase = "download"
        elif d == "local":
            phase = "compute"
        else:
            phase = "messages"  # split learning's activations and gradients, stats
        bars[c].append((phase, 0.0, secs))
    for c, segments in bars.items():  # downloads first, uploads last, the rest in between
        order = {"download": 0, "compute": 1, "messages": 1, "upload": 2}
        t, placed = 0.0, []
        for phase, _, secs in sorted(segments, key=lambda s: order[s[0]]):
            placed.append((phase, t, secs))
            t += secs
        bars[c], clock[c] = placed, t
    took_part = [c for c in bars if c in ups] or list(bars)
    slowest = max(took_part, key=lambda c: clock[c]) if took_part else None
    end = clock[slowest] if slowest is not None else 0.0
    if server:
        bars[-1] = [("server", end, server)]
    return dict(bars), end + server, slowest


PHASE_COLORS = {"download": "#4C72B0", "compute": "#55A868", "messages": "#DD8452", "upload": "#8172B3",
                "server": "#937860"}


def slowest_round(run: Run) -> int | None:
    rounds = [m for m in run.metrics if m.get("emulated_seconds") is not None]
    return int(max(rounds, key=lambda m: m["emulated_seconds"])["round"]) if rounds else None


def timeline(run: Run, path: Path, rnd: int | None = None) -> Path:
    """Gantt chart of one round on the emulated clock, the critical path outlined."""
    rnd = slowest_round(run) if rnd is None else rnd
    fig, ax = _figure(width=8.0, height=4.5)
    if rnd is None or not run.ledger:
        _empty(ax, "no ledger rows")
        return _save(fig, path)
    bars, total, slowest = round_timeline(run, rnd)
    clients = sorted(c for c in bars if c >= 0) + ([-1] if -1 in bars else [])
    for y, c in enumerate(clients):
        for phase, start, secs in bars[c]:
            critical = c == slowest or c == -1
            ax.barh(y, secs, left=start, color=PHASE_COLORS[phase], edgecolor="black" if critical else "none",
                    linewidth=1.2 if critical else 0)
    ax.set_yticks(range(len(clients)))
    ax.set_yticklabels(["server" if c == -1 else f"client {c}" + (" (critical)" if c == slowest else "")
                        for c in clients], fontsize="small")
    ax.invert_yaxis()
    ax.axvline(total, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("emulated seconds into the round")
    ax.set_title(f"Round {rnd} timeline — {run.name} ({total:.2f} s)")
    from matplotlib.patches import Patch

    used = {p for c in clients for p, _, _ in bars[c]}
    ax.legend(handles=[Patch(color=PHASE_COLORS[p], label=p) for p in PHASE_COLORS if p in used],
              fontsize="small", loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def file_stems(runs: list[Run]) -> list[str]:
    """A distinct, file-safe stem per run (two folders may share a run name)."""
    stems: list[str] = []
    for run in runs:
        stem = candidate = re.sub(r"[^A-Za-z0-9._=+-]+", "_", run.name).strip("._") or "run"
        n = 1
        while candidate in stems:
            n += 1
            candidate = f"{stem}-{n}"
        stems.append(candidate)
    return stems


def write_all(runs: list[Run], out: Path) -> list[Path]:
    files = [accuracy_vs(runs, "bytes", out / "accuracy_vs_bytes.png"),
             accuracy_vs(runs, "time", out / "accuracy_vs_time.png")]
    colors = kind_colors(runs)
    for run, stem in zip(runs, file_stems(runs)):
        files.append(bytes_by_kind(run, out / f"bytes_by_kind_{stem}.png", colors))
        files.append(client_bytes(run, out / f"client_bytes_{stem}.png"))
        files.append(timeline(run, out / f"timeline_{stem}.png"))
    return files
