"""Two clocks: `virtual` records emulated time without sleeping (deterministic,
fast); `realtime` really holds each message for its emulated transfer time."""
from __future__ import annotations

import time

_SPIN_S = 0.002  # the final stretch of a realtime hold is busy-waited


class VirtualClock:
    realtime = False

    def hold(self, seconds: float, since: float) -> None:
        """Virtual time only: the ledger carries the seconds."""


class RealtimeClock:
    realtime = True

    def hold(self, seconds: float, since: float) -> None:
        """Block until `seconds` have passed since `since` (a time.perf_counter()
        or time.time() stamp of the same kind), so real transport time is part
        of, not added to, the emulated transfer time."""
        deadline = since + seconds
        remaining = deadline - time.time()
        if remaining > _SPIN_S:
            time.sleep(remaining - _SPIN_S)  # sleep() overshoots by up to a scheduler tick
        while time.time() < deadline:  # so spin the last stretch
            pass


def make_clock(kind: str) -> VirtualClock | RealtimeClock:
    return RealtimeClock() if kind == "realtime" else VirtualClock()
