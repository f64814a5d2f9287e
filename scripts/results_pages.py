"""The tables of docs/results/compression.md and docs/results/strategies.md, from the run
folders of the committed campaign sweeps (configs/campaigns/), so no number is typed by hand.

    scripts/campaign.sh compression-lora compression-full strategies-backdoor strategies-backdoor-lora \\
        strategies-backdoor-prompt strategies-dp strategies-noniid
    python scripts/results_pages.py [--runs docs/results/measured]   # the committed copies

Each page is the text between its markers <!-- tables:begin --> and <!-- tables:end -->
replaced; the prose around it is the page's own.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"


def _summary(folder: Path) -> dict | None:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _metrics(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _runs(runs: Path, prefix: str, exclude: tuple[str, ...] = ()) -> list[tuple[str, Path, dict]]:
    """(case, folder, summary) of the finished runs named PREFIX-CASE-sSEED, but for
    cases starting with one of `exclude` (another sweep sharing the prefix)."""
    out = []
    for folder in sorted(runs.glob(f"{prefix}-*")):
        s = _summary(folder)
        case = folder.name[len(prefix) + 1:].rsplit("-s", 1)[0]
        if s is not None and not case.startswith(exclude):
            out.append((case, folder, s))
    return out


def _f(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def compression(runs: Path) -> str:
    parts = []
    for method in ("lora", "full"):
        rows = _runs(runs, f"compression-{method}")
        if not rows:
            continue
        fp32 = next((s for c, _, s in rows if c == "fp32"), None)
        parts.append(f"### {method}\n\n| codec | final accuracy | bytes up (total) | up vs fp32 | bytes down | "
                     f"emulated time (s) | wall (s) |\n|---|---:|---:|---:|---:|---:|---:|")
        for case, _, s in rows:
            ratio = (fp32["total_bytes_up"] / s["total_bytes_up"]) if fp32 else None
            parts.append(f"| {case} | {_f(s['final_accuracy'])} | {s['total_bytes_up']:,} | "
                         f"{'–' if ratio is None else f'{ratio:.2f}×'} | {s['total_bytes_down']:,} | "
                         f"{s['emulated_seconds']:.1f} | {s['wall_seconds']:.0f} |")
        parts.append("")
    return "\n".join(parts)


def strategies(runs: Path) -> str:
    parts = []
    rows = _runs(runs, "strategies-noniid")
    if rows:
        rounds = max(len(_metrics(f)) for _, f, _ in rows)
        parts.append("### Non-IID (Dirichlet α = 0.1), LoRA: accuracy per round\n")
        parts.append("| strategy | " + " | ".join(f"r{r}" for r in range(rounds)) + " | bytes up | bytes down |")
        parts.append("|---|" + "---:|" * rounds + "---:|---:|")
        for case, folder, s in rows:
            acc = [m.get("accuracy") for m in _metrics(folder)]
            parts.append(f"| {case} | " + " | ".join(_f(a, 3) for a in acc) +
                         f" | {s['total_bytes_up']:,} | {s['total_bytes_down']:,} |")
        parts.append("")
    methods = (("full", _runs(runs, "strategies-backdoor", exclude=("lora-", "prompt-"))),
               ("lora", _runs(runs, "strategies-backdoor-lora")), ("prompt", _runs(runs, "strategies-backdoor-prompt")))
    if any(rows for _, rows in methods):
        parts.append("### Backdoor against robust aggregation (6 clients per round, the malicious client in each)\n")
        parts.append("| method | aggregator | clean accuracy | ASR | untriggered target rate | ASR lift | "
                     "malicious client-rounds | wall (s) |\n|---|---|---:|---:|---:|---:|---:|---:|")
        for method, rows in methods:
            for case, _, s in rows:
                parts.append(f"| {method} | {case} | {_f(s['final_accuracy'])} | "
                             f"{_f(s.get('final_attack_success_rate'))} | {_f(s.get('final_untriggered_target_rate'))} | "
                             f"{_f(s.get('final_asr_lift'))} | {s.get('malicious_client_rounds', '–')} | "
                             f"{s['wall_seconds']:.0f} |")
        parts.append("")
    rows = _runs(runs, "strategies-dp")
    ref = _summary(runs / "compression-lora-fp32-s0")
    if rows:
        parts.append("### DP-FedAvg, LoRA, IID: accuracy against ε (δ = 1e-5)\n")
        parts.append("| noise multiplier | ε | final accuracy |\n|---|---:|---:|")
        if ref is not None:
            parts.append(f"| none (compression-lora-fp32) | ∞ | {_f(ref['final_accuracy'])} |")
        for case, _, s in rows:
            parts.append(f"| {case.lstrip('z')} | {_f(s.get('epsilon'), 2)} | {_f(s['final_accuracy'])} |")
        parts.append("")
    return "\n".join(parts)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.4f} (n=1)"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.4f} ± {std:.4f} (n={len(values)})"


def baselines(runs: Path) -> str:
    """Federated vs centralised (seeds) vs local-only (one run per client: their mean is the baseline)."""
    parts = []
    for method in ("full",):
        rows = _runs(runs, f"baselines-{method}")
        local = _runs(runs, "baselines-local")
        if not rows and not local:
            continue
        parts.append(f"### {method}\n\n| setting | final accuracy, mean ± std | runs | client FLOPs (per run) | "
                     "bytes up+down (per run) |\n|---|---:|---|---:|---:|")
        for case in ("federated", "centralised"):
            got = [(f, s) for c, f, s in rows if c == case]
            if not got:
                continue
            accs = [s["final_accuracy"] for _, s in got]
            flops = sum(s["total_client_flops"] for _, s in got) / len(got)
            nbytes = sum(s["total_bytes_up"] + s["total_bytes_down"] for _, s in got) / len(got)
            parts.append(f"| {case} | {_mean_std(accs)} | {', '.join(f.name for f, _ in got)} | {flops:.3g} | "
                         f"{nbytes:,.0f} |")
        if local:
            accs = [s["final_accuracy"] for _, _, s in local]
            parts.append(f"| local-only (mean over {len(accs)} clients, each alone) | {_mean_std(accs)} | "
                         f"{local[0][1].name} … {local[-1][1].name} | "
                         f"{sum(s['total_client_flops'] for _, _, s in local) / len(local):.3g} | "
                         "0 (nothing is exchanged; the runs' own download/upload rows are not counted) |")
        parts.append("")
    return "\n".join(parts)


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float, float] | None:
    """Mean of the per-seed differences a - b and its 95% t interval (None under 2 pairs)."""
    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        return None
    mean = sum(d) / len(d)
    sd = (sum((x - mean) ** 2 for x in d) / (len(d) - 1)) ** 0.5
    half = T95.get(len(d) - 1, 1.96) * sd / len(d) ** 0.5
    return mean, mean - half, mean + half


def plateau(folder: Path, last: int = 5) -> float:
    """Mean test accuracy over the last `last` evaluated rounds: the plateau a curve sits on,
    less noisy than its final point."""
    accs = [m["accuracy"] for m in _metrics(folder) if m.get("accuracy") is not None]
    tail = accs[-last:]
    return sum(tail) / len(tail)


def choose_lr(got: list[tuple[float, float]], tie: float = 0.01) -> float:
    """The learning rate of (lr, validation accuracy) pairs (sorted by lr): the best, where any
    within `tie` of it counts as tied and a tie goes to the rate nearest the grid's middle."""
    best = max(acc for _, acc in got)
    middle = (len(got) - 1) / 2
    tied = [i for i, (_, acc) in enumerate(got) if acc >= best - tie - 1e-9]  # exactly 1 point is tied
    return got[min(tied, key=lambda i: (abs(i - middle), i))][0]


def lr_grid(runs: Path) -> str:
    """Per method: final validation accuracy at each learning rate, and the choice."""
    rows = {}
    for folder in sorted(runs.glob("lrgrid-*")):
        s = _summary(folder)
        if s is None:
            continue
        cfg = (folder / "config.yaml").read_text()
        lr = float(re.search(r"^  lr: (.+)$", cfg, re.M).group(1))
        method = folder.name[len("lrgrid-"):].rsplit("-lr", 1)[0]
        rows.setdefault(method, []).append((lr, s["final_accuracy"], s["wall_seconds"]))
    if not rows:
        return "(the lr grid has not run yet)"
    out = ["| method | lr → final validation accuracy (10 rounds) | chosen lr (ties within 1 point: the middle) | "
           "wall s per run |",
           "|---|---|---:|---:|"]
    for method, got in rows.items():
        got.sort()
        chosen = choose_lr([(lr, acc) for lr, acc, _ in got])
        cells = ", ".join(f"{lr:g} → {acc:.4f}" for lr, acc, _ in got)
        wall = sum(w for _, _, w in got) / len(got)
        edge = chosen in (got[0][0], got[-1][0])  # the best may lie beyond the grid
        note = " (grid incomplete)" if len(got) != 3 else " (at the grid's edge: extend)" if edge else ""
        out.append(f"| {method} | {cells} | {chosen:g}{note} | {wall:.0f} |")
    return "\n".join(out)


def reference(runs: Path) -> str:
    """Federated full fine-tuning vs the centralised fine-tune of the same budget, per seed."""
    got = {case: {f.name.rsplit("-s", 1)[1]: (f, s) for c, f, s in _runs(runs, "reference") if c == case}
           for case in ("federated", "centralised")}
    flat = {case: {seed: plateau(f) for seed, (f, _) in by_seed.items()} for case, by_seed in got.items()}
    if not any(got.values()):
        return "(the reference runs have not run yet)"
    out = ["| setting | seed | final accuracy | plateau (mean of the last 5 rounds) | best | wall s |",
           "|---|---|---:|---:|---:|---:|"]
    for case, by_seed in got.items():
        for seed, (f, s) in sorted(by_seed.items()):
            accs = [m["accuracy"] for m in _metrics(f) if m.get("accuracy") is not None]
            out.append(f"| {case} | {seed} | {s['final_accuracy']:.4f} | {flat[case][seed]:.4f} | {max(accs):.4f} | "
                       f"{s['wall_seconds']:.0f} |")
    for case, by_seed in got.items():
        if by_seed:
            out.append(f"| **{case}, mean ± std** | {len(by_seed)} seeds | "
                       f"{_mean_std([s['final_accuracy'] for _, s in by_seed.values()])} | "
                       f"{_mean_std(list(flat[case].values()))} | | |")
    seeds = sorted(set(got["federated"]) & set(got["centralised"]))
    pairs = paired_interval([flat["centralised"][k] for k in seeds], [flat["federated"][k] for k in seeds])
    out.append("")
    if pairs is None:
        gaps = [flat["centralised"][k] - flat["federated"][k] for k in seeds]
        out.append(f"Plateau gap centralised − federated: {', '.join(f'{g * 100:+.1f}' for g in gaps) or '–'} points "
                   f"({len(seeds)} paired seed{'s' if len(seeds) != 1 else ''}: no interval yet).")
    else:
        mean, lo, hi = pairs
        verdict = ("no verdict under 3 seeds" if len(seeds) < 3 else "within 2 points" if hi < 0.02 else
                   "more than 2 points" if lo > 0.02 else "not decided against 2 points")
        out.append(f"Plateau gap centralised − federated over {len(seeds)} paired seeds: {mean * 100:+.2f} points, "
                   f"95% interval [{lo * 100:+.2f}, {hi * 100:+.2f}]: **{verdict}**.")
    total = sum(s["wall_seconds"] for by_seed in got.values() for _, s in by_seed.values())
    out.append(f"\nWall time of these runs: {total:.0f} s on the 2-core machine ({total / 3600:.2f} h).")
    return "\n".join(out)


def campaign(runs: Path) -> str:
    return ("### Learning rates (validation split, seed 0)\n\n" + lr_grid(runs)
            + "\n\n### The reference: federated full fine-tuning vs centralised, same budget\n\n" + reference(runs))


def fill(page: Path, tables: str) -> None:
    text = page.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    page.write_text(pattern.sub(lambda _: f"{BEGIN}\n{tables}\n{END}", text))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=str(ROOT / "docs" / "results" / "measured"))
    args = ap.parse_args()
    runs = Path(args.runs)
    fill(ROOT / "docs/results/compression.md", compression(runs))
    fill(ROOT / "docs/results/strategies.md", strategies(runs))
    fill(ROOT / "docs/results/baselines.md", baselines(runs))
    fill(ROOT / "docs/results/campaign.md", campaign(runs))


if __name__ == "__main__":
    main()
