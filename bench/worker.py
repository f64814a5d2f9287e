"""Bench code that runs on every rank under mpiexec:

  python -m bench.worker overhead OUT.json REPS CONFIG [KEY=VALUE ...]   # instrumented / bypassed, alternating
  python -m bench.worker aggregate OUT.json NUMEL REPS PER_RANK
  python -m bench.worker link OUT.json LATENCY_MS REPS MB@MBPS [MB@MBPS ...]

Rank 0 writes OUT.json. The "bypassed" mode builds the same experiment but
swaps in a Link that only calls torch.distributed (no charges, no ledger
rows) and a disabled FlopMeter: what the same rounds cost without fedmpi's
instrumentation, with no switch in the core.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from fedmpi.metering.ledger import Ledger, RoundTotals
from fedmpi.net.link import Link


class RawLink(Link):
    """The Link's data movement alone: the same collectives, nothing recorded."""

    def charge(self, client: int, direction: str, kind: str, nbytes: int) -> float:
        return 0.0

    def charge_compute(self, client: int, flops: int) -> float:
        return 0.0

    def charge_server(self, kind: str, flops: int) -> float:
        return 0.0

    def broadcast(self, tensor, *, kind, clients):
        dist.broadcast(tensor, src=0)
        return tensor

    def reduce(self, tensor, *, kind, uploads, **_):
        self.sum_to_server(tensor)
        return tensor


class NullLedger(Ledger):
    """A ledger that keeps nothing (instrumentation bypassed)."""

    def add(self, round, client, direction, kind, *, bytes=0, flops=0, seconds=0.0):
        return None

    def add_transport(self, nbytes: int) -> None:
        pass

    def close_round(self, round: int, excluded=None) -> RoundTotals:
        return RoundTotals(round=round)


def _write(rt, out: str, obj) -> None:
    if rt.rank == 0:
        Path(out).write_text(json.dumps(obj, indent=1))


def bypass(engine) -> None:
    """Swap out an engine's instrumentation: a Link that only moves data,
    a disabled FLOP meter, and a ledger that keeps nothing."""
    from fedmpi.metering.flops import FlopMeter

    ctx = engine.ctx
    ctx.meter = FlopMeter(enabled=False)
    ctx.link.__class__ = RawLink
    if ctx.link.ledger is not None:
        ctx.link.ledger = NullLedger(None)


def run_overhead(out: str, reps: int, config: str, overrides: list[str]) -> None:
    """Instrumented and bypassed engine runs alternating inside one job:
    the same warm processes, so process start-up and machine drift cancel.
    Each run gets a fresh engine (fresh FLOP meter: its per-shape counts
    are paid again) from the same initial weights; one untimed pair warms up."""
    import copy
    import dataclasses

    from fedmpi.config import load_config
    from fedmpi.experiment import build, prepare
    from fedmpi.runtime import init_runtime, shutdown

    cfg = load_config(config, overrides)
    prep = prepare(cfg)
    rt = init_runtime(cfg.runtime)
    init = copy.deepcopy(prep.model.state_dict())
    runs: list[dict] = []
    for rep in range(reps + 1):
        for mode in (("instrumented", "bypassed") if rep % 2 == 0 else ("bypassed", "instrumented")):
            prep.model.load_state_dict(init)
            exp = build(dataclasses.replace(cfg, name=f"{mode}{rep}"), rt, prep)
            if mode == "bypassed":
                bypass(exp)
            dist.barrier()
            t0 = time.perf_counter()
            summary = exp.run()
            took = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(took, op=dist.ReduceOp.MAX)
            counted = torch.tensor([exp.ctx.meter.counted_calls], dtype=torch.int64)
            dist.all_reduce(counted)
            if rep and rt.is_server:
                runs.append({"mode": mode, "rep": rep, "run_s": float(took), "counted_calls": int(counted),
                             "final_loss": summary["final_loss"], "final_accuracy": summary["final_accuracy"]})
    _write(rt, out, {"runs": runs})
    shutdown()


def run_aggregate(out: str, numel: int, reps: int, per_rank: int) -> None:
    """fedmpi's Aggregator (float64 and float32) vs raw collectives of the
    same flat fp32 buffer, interleaved, on the same ranks."""
    from fedmpi.engine.aggregate import Aggregator, ClientUpdate
    from fedmpi.config import ExperimentConfig, RuntimeConfig
    from fedmpi.net.clock import VirtualClock
    from fedmpi.net.profiles import PRESETS
    from fedmpi.runtime import init_runtime, shutdown

    rt = init_runtime(RuntimeConfig(backend="gloo"))
    sampled = list(range(per_rank * rt.num_client_ranks))
    n = len(sampled)
    ledger = Ledger(None) if rt.is_server else None
    link = Link(rt, [PRESETS["datacenter"]] * n, VirtualClock(), [1e10] * n, 1e12, ledger=ledger)
    g = torch.Generator().manual_seed(rt.rank)
    states = {c: torch.randn(numel, generator=g) for c in rt.clients_here(sampled)}
    raw = torch.randn(numel, generator=g)

    def fed_for(dtype: str):
        cfg = ExperimentConfig()
        cfg.federation.aggregation_dtype = dtype
        cfg.federation.clients_per_round = n
        return cfg.federation

    feds = {"fedmpi float64": fed_for("float64"), "fedmpi float32": fed_for("float32")}
    buffers: dict = {}

    def fedmpi(name: str) -> None:
        agg = Aggregator(link, feds[name], buffers, sampled, numel, kind=name)
        for c, s in states.items():
            agg.add(ClientUpdate(c, s, num_samples=10 + c, loss_sum=1.0, flops=1000, up_bytes=numel * 4))
        agg.finish()
        if ledger is not None:
            ledger.close_round(0)

    variants = {
        "raw all_reduce fp32": lambda: dist.all_reduce(raw),
        "raw reduce fp32": lambda: dist.reduce(raw, dst=0),
        "fedmpi float64": lambda: fedmpi("fedmpi float64"),
        "fedmpi float32": lambda: fedmpi("fedmpi float32"),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(reps + 1):  # the first repetition warms up, not timed
        for name, fn in variants.items():
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            # the slowest rank's time is the round's aggregation time
            t = torch.tensor([dt], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            if rep:
                times[name].append(float(t))
    _write(rt, out, {"numel": numel, "world": rt.world_size, "clients": n, "times": times})
    shutdown()


def run_link(out: str, latency_ms: float, reps: int, pairs: list[str]) -> None:
    """Client rank 1 -> server through to_server/from_client: realtime wall
    vs latency + bytes*8/bandwidth, and the virtual clock's ledger seconds."""
    from fedmpi.config import RuntimeConfig
    from fedmpi.net.clock import RealtimeClock, VirtualClock
    from fedmpi.net.profiles import LinkProfile, transfer_seconds
    from fedmpi.runtime import init_runtime, shutdown

    rt = init_runtime(RuntimeConfig(backend="gloo"))
    rows = []
    for pair in pairs:
        mb, mbps = (float(x) for x in pair.split("@"))
        nbytes = int(mb * 1e6)
        prof = LinkProfile(up_mbps=mbps, down_mbps=mbps, latency_ms=latency_ms)
        payload = torch.ones(nbytes, dtype=torch.uint8)
        for clock_name, clock in (("realtime", RealtimeClock()), ("virtual", VirtualClock())):
            ledger = Ledger(None) if rt.is_server else None
            link = Link(rt, [prof], clock, ledger)
            for _ in range(reps):
                dist.barrier()
                start = time.time()
                if rt.is_server:
                    got = link.from_client(client=0, kind="update")
                else:
                    link.to_server(payload, client=0, kind="update")
                end = time.time()
                if rt.is_server:
                    assert got.numel() == nbytes
                    del got  # outside the timing: unmapping a 100 MB buffer costs ~10 ms
                stamps = [None] * rt.world_size if rt.is_server else None
                dist.gather_object(start, stamps, dst=0)
                if rt.is_server:
                    measured = end - stamps[1]  # same host clock: client's send start to server's return
                    row = ledger.pending[-1]
                    rows.append({"clock": clock_name, "mb": mb, "mbps": mbps, "bytes": nbytes,
                                 "expected_s": transfer_seconds(nbytes, mbps, latency_ms),
                                 "formula_s": latency_ms / 1e3 + nbytes * 8 / (mbps * 1e6),
                                 "ledger_s": row.seconds, "ledger_bytes": row.bytes, "measured_s": measured})
                    ledger.close_round(0)
    _write(rt, out, {"latency_ms": latency_ms, "rows": rows})
    shutdown()


def main(argv: list[str]) -> None:
    task, out = argv[0], argv[1]
    torch.set_num_threads(1)
    if task == "overhead":
        run_overhead(out, int(argv[2]), argv[3], argv[4:])
    elif task == "aggregate":
        run_aggregate(out, int(argv[2]), int(argv[3]), int(argv[4]))
    elif task == "link":
        run_link(out, float(argv[2]), int(argv[3]), argv[4:])
    else:
        raise SystemExit(f"unknown task {task}")


if __name__ == "__main__":
    main(sys.argv[1:])
