"""FlowerTune-style communication cost in summary.json: the megabytes every round
moved between server and clients (uplink + downlink, as the ledger charged
them, codec-encoded), and their total over the run. FlowerTune's LLM
leaderboard reports the same total as a run's communication budget.

    "communication": {"unit": "MB", "per_round": [..], "total": .., "up": .., "down": ..}
"""
from __future__ import annotations

from typing import Any

from fedmpi.engine.callbacks import Callback

MB = 1e6  # decimal megabytes, as FlowerTune reports them


def communication_block(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per_round = [(r["bytes_up"] + r["bytes_down"]) / MB for r in rows]
    return {"unit": "MB", "per_round": per_round, "total": sum(per_round),
            "up": sum(r["bytes_up"] for r in rows) / MB, "down": sum(r["bytes_down"] for r in rows) / MB}


class CommunicationCost(Callback):
    def on_setup(self, ctx) -> None:
        self.run_dir = ctx.run_dir

    def on_end(self, summary: dict[str, Any]) -> None:
        from fedmpi.engine.outputs import read_metrics

        if getattr(self, "run_dir", None) is not None:  # every round, a resumed run's earlier ones too
            summary["communication"] = communication_block(read_metrics(self.run_dir))
