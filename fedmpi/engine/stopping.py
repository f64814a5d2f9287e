"""Stopping at a round boundary on a signal (fedmpi.signals), the same round on every rank."""
from __future__ import annotations

from typing import Any, Callable

from fedmpi.engine.callbacks import Callback
from fedmpi.signals import REQUEST, StopRequest, Stopped


class GracefulStop(Callback):
    """Every rank, at the start of each round: one small collective (the MAX of
    the ranks' stop flags), so a signal that reached any rank stops all of them
    before the round's traffic. The server makes sure the last completed round
    is checkpointed (the Checkpointer already wrote it when output.checkpoint is
    on), then every rank raises `Stopped`."""

    def __init__(self, rt, writer=None, state_of: Callable[[int], dict[str, Any]] | None = None,
                 checkpointed: bool = True, request: StopRequest = REQUEST) -> None:
        self.rt, self.writer, self.state_of, self.checkpointed = rt, writer, state_of, checkpointed
        self.request = request
        self.first: int | None = None  # the first round this job runs
        self.resumed_from: int | None = None  # the checkpoint this job started from

    def on_round_start(self, rnd: int, sampled: list[int]) -> None:
        if self.first is None:
            self.first = rnd
            self.resumed_from = rnd - 1 if rnd > 0 else None
        if not self.rt.any_rank(self.request.requested):
            return
        saved = self.resumed_from
        if rnd > self.first:
            saved = rnd - 1
            if self.rt.is_server and not self.checkpointed and self.writer is not None:
                self.writer.checkpoint(self.state_of(rnd - 1))
        raise Stopped(self.request.name if self.request.requested else "a peer's signal", rnd, saved,
                      self.writer.dir if self.writer is not None else None)
