"""The short table the server prints at the end of a run."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    acc = s.get("final_accuracy")
    rows = [
        ("algorithm / method", f"{s['algorithm']} / {s['method']}"),
        ("rounds", str(s["rounds"])),
        ("final accuracy", "-" if acc is None else f"{acc:.4f}"),
        ("bytes up / down", f"{_fmt_bytes(s['total_bytes_up'])} / {_fmt_bytes(s['total_bytes_down'])}"),
        ("client GFLOPs", f"{s['total_client_flops'] / 1e9:.2f}"),
        ("server GFLOPs", f"{s['total_server_flops'] / 1e9:.2f}"),
        ("emulated time", f"{s['emulated_seconds']:.1f} s"),
        ("wall time", f"{s['wall_seconds']:.1f} s"),
    ]
    if "trainable_params" in s:
        rows.append(("trainable params", f"{s['trainable_params']:,} ({100 * s['trainable_share']:.3f}%)"))
    if "final_attack_success_rate" in s:
        rows.append(("attack success rate", f"{s['final_attack_success_rate']:.4f}"))
    return rows


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fedmpi: {summary['name']}", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    for k, v in summary_rows(summary):
        table.add_row(k, v)
    console = Console()
    console.print(table)
    console.print(f"run folder: {run_dir}")
