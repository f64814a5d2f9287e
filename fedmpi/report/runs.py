"""Reading run folders back: the report's only view of a run.

A run folder is any directory holding ``summary.json``. The reader is lenient
on purpose: unknown keys are ignored, missing optional summary keys are filled
from ``metrics.jsonl``, and a truncated last JSONL line (a killed run) is
skipped, so old and partial runs still make it into a report.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml


class ReportError(ValueError):
    """A user error (no runs found, unreadable summary): one line, exit status 2."""


@dataclass
class Run:
    path: Path
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.config.get("name") or self.path.name)

    @property
    def algorithm(self) -> str:
        return str(self.summary.get("algorithm") or self.config.get("algorithm") or "")

    @property
    def method(self) -> str:
        method = self.summary.get("method") or (self.config.get("method") or {}).get("name")
        return str(method or "")

    def total(self, summary_key: str, metric_key: str) -> float:
        """A summary total, or the sum over rounds when the summary lacks it."""
        value = self.summary.get(summary_key)
        if value is not None:
            return value
        return sum(m.get(metric_key) or 0 for m in self.metrics)

    @property
    def final_accuracy(self) -> float | None:
        if self.summary.get("final_accuracy") is not None:
            return float(self.summary["final_accuracy"])
        evaluated = [m["accuracy"] for m in self.metrics if m.get("accuracy") is not None]
        return float(evaluated[-1]) if evaluated else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            print(f"fedmpi report: skipping unreadable line {number} of {path}", file=sys.stderr)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def load_run(path: Path) -> Run:
    summary_file = path / "summary.json"
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read {summary_file}: {exc}") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{summary_file} is not a JSON object")
    config: dict[str, Any] = {}
    config_file = path / "config.yaml"
    if config_file.is_file():
        try:
            loaded = yaml.safe_load(config_file.read_text())
            config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            print(f"fedmpi report: ignoring unreadable {config_file}", file=sys.stderr)
    metrics = sorted(_read_jsonl(path / "metrics.jsonl"), key=lambda m: m.get("round", 0))
    return Run(path, summary, config, metrics, _read_jsonl(path / "ledger.jsonl"))


def find_run_dirs(roots: Iterable[Path]) -> list[Path]:
    """Run folders at or below each root, sorted, without duplicates."""
    found: list[Path] = []
    for root in roots:
        if not root.is_dir():
            raise ReportError(f"no such directory: {root}")
        candidates = [root] if (root / "summary.json").is_file() else []
        candidates += sorted(p.parent for p in root.rglob("summary.json") if p.parent != root)
        found += [p for p in candidates if p.resolve() not in {f.resolve() for f in found}]
    return found


def load_runs(roots: Iterable[Path]) -> list[Run]:
    roots = list(roots)
    dirs = find_run_dirs(roots)
    if not dirs:
        raise ReportError(f"no run folders (directories with summary.json) under {', '.join(map(str, roots))}")
    return [load_run(d) for d in dirs]
