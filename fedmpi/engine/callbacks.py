"""Engine callbacks: metrics rows, checkpoints, progress, trackers and plug-ins
(backdoor ASR, initial sync) all hook into the round through these methods.

Every hook is optional. `on_setup` and `on_round_start` run on every rank
(collectives allowed, in the same order everywhere); the others run on the
server only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from fedmpi.engine.context import Context


class Callback:
    def on_setup(self, ctx: "Context") -> None:
        """Every rank, once, before the algorithm's setup (collective allowed)."""

    def on_round_start(self, rnd: int, sampled: list[int]) -> None:
        """Every rank, before the round's traffic."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Server: extra metrics of the global model at each evaluation."""
        return {}

    def on_round_end(self, rnd: int, row: dict[str, Any]) -> None:
        """Server: the round's metrics row, complete."""

    def on_end(self, summary: dict[str, Any]) -> None:
        """Server: the run's summary, before it is written."""

    def close(self) -> None:
        """Server: the run is over (normally or not); release files."""


class MetricsLog(Callback):
    """metrics.jsonl, one row per round; the run folder's files are closed at the end."""

    def __init__(self, writer, ledger) -> None:
        self.writer, self.ledger = writer, ledger

    def on_round_end(self, rnd: int, row: dict[str, Any]) -> None:
        self.writer.metrics(row)

    def close(self) -> None:
        self.writer.close()
        self.ledger.close()


class Checkpointer(Callback):
    """An atomic checkpoint of the server's state after every round."""

    def __init__(self, writer, state_of) -> None:
        self.writer = writer
        self.state_of = state_of  # rnd -> the checkpoint's contents

    def on_round_end(self, rnd: int, row: dict[str, Any]) -> None:
        self.writer.checkpoint(self.state_of(rnd))


class Progress(Callback):
    """A tqdm bar on the server's terminal with the latest loss and score."""

    def __init__(self, name: str, total: int, score: str) -> None:
        self.name, self.total, self.score = name, total, score
        self.bar = None

    def on_round_end(self, rnd: int, row: dict[str, Any]) -> None:
        if self.bar is None:  # created at the first round run, so a resumed bar starts where it left off
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=rnd, desc=self.name, unit="round", dynamic_ncols=True)
        acc, loss = row.get(self.score), row.get("loss")
        self.bar.set_postfix(loss="-" if loss is None else f"{loss:.3f}",
                             **{self.score[:3]: "-" if acc is None else f"{acc:.3f}"})
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
