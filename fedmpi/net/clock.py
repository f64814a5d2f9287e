"""Two clocks: `virtual` records emulated time without sleeping (deterministic,
fast); `realtime` really holds each message for its emulated transfer time."""
from __future__ import annotations

import time


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
        remaining = since + seconds - time.time()
        if remaining > 0:
            time.sleep(remaining)


def make_clock(kind: str) -> VirtualClock | RealtimeClock:
    return RealtimeClock() if kind == "realtime" else VirtualClock()
