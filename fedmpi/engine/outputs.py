"""The run folder: config.yaml, metrics.jsonl, ledger.jsonl, summary.json and an
atomic checkpoint. Written by the server only."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fedmpi.atomic import atomic_torch_save, atomic_write_bytes
from fedmpi.config import ExperimentConfig, dump_config
from fedmpi.jsonsafe import dumps

CHECKPOINT = "checkpoint.pt"


def _truncate_jsonl(path: Path, last_round: int) -> None:
    """Keep rows of rounds <= last_round (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # blank, or a row cut short when the job was killed mid-write
        if row["round"] <= last_round:
            keep.append(line)
    atomic_write_bytes(path, ("".join(line + "\n" for line in keep)).encode())


class RunWriter:
    def __init__(self, cfg: ExperimentConfig, resume_round: int | None = None) -> None:
        self.dir = cfg.run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.ledger_path = self.dir / "ledger.jsonl"
        if resume_round is None:
            for p in (self.metrics_path, self.ledger_path, self.dir / "summary.json"):
                p.unlink(missing_ok=True)
        else:
            _truncate_jsonl(self.metrics_path, resume_round)
            _truncate_jsonl(self.ledger_path, resume_round)
        (self.dir / "config.yaml").write_text(dump_config(cfg))
        self._metrics = self.metrics_path.open("a")

    def metrics(self, row: dict[str, Any]) -> None:
        self._metrics.write(dumps(row) + "\n")
        self._metrics.flush()

    def summary(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.dir / "summary.json", (dumps(summary, indent=2) + "\n").encode())

    def checkpoint(self, state: dict[str, Any]) -> None:
        atomic_torch_save(state, self.dir / CHECKPOINT)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.dir)

    def close(self) -> None:
        self._metrics.close()


def load_checkpoint(cfg: ExperimentConfig) -> dict[str, Any] | None:
    path = cfg.run_dir / CHECKPOINT
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
