"""The synchronous round engine: it owns the loop every algorithm runs on.

A round, on every rank in the same order:

1. sample clients from (seed, round); `before_round` hooks;
2. download: the global `params`, encoded by the down codec, to every
   sampled client (charged per client); per-client state to the ranks
   hosting them;
3. each client hosted here (unless it drops out) loads the global state and
   runs the algorithm's `train_client`; its compute is charged, its state is
   encoded by the up codec, and its emulated time (download + messages +
   compute + upload, all from the Link) decides whether it beats the deadline;
4. the server meanwhile runs the algorithm's `serve` (split learning);
5. one collective sums the arrived clients' weighted states onto the server,
   which applies the mean through the server strategy;
6. per-client state returns to the server; `after_round` hooks;
7. the server closes the round: Ledger totals, evaluation when due, callbacks
   (metrics row, checkpoint, tracker, progress).

Another policy (buffered asynchronous aggregation, FedBuff-style) is another
class with its own `run_round` over the same hooks: see docs/architecture.md.
"""
from __future__ import annotations

import math
import os
import signal
import time
from typing import Any

import torch

from fedmpi.engine.aggregate import Aggregator, ClientUpdate
from fedmpi.engine.algorithm import Algorithm
from fedmpi.engine.callbacks import Callback
from fedmpi.engine.context import Context
from fedmpi.engine.outputs import RunWriter
from fedmpi.engine.sampling import drops_out, sample_clients
from fedmpi.engine.training import LocalStats
from fedmpi.metering.ledger import UP
from fedmpi.metering.memory import peak_memory_bytes
from fedmpi.net.flat import flatten, unflatten_into
from fedmpi.seeding import seed_torch
from fedmpi.state.store import ClientStateStore
from fedmpi.strategies.base import ServerStrategy


def fault_injection(rank: int, rnd: int) -> None:
    """Tests of failure handling: FEDMPI_KILL_AT_ROUND=r [FEDMPI_KILL_RANK=k]
    SIGKILLs rank k (default 0) as round r starts, like a node dying mid-job."""
    at = os.environ.get("FEDMPI_KILL_AT_ROUND")
    if at is not None and int(at) == rnd and int(os.environ.get("FEDMPI_KILL_RANK", 0)) == rank:
        os.kill(os.getpid(), signal.SIGKILL)


class SyncEngine:
    def __init__(self, ctx: Context, algorithm: Algorithm, strategy: ServerStrategy | None = None,
                 callbacks: list[Callback] | None = None, writer: RunWriter | None = None,
                 store: ClientStateStore | None = None, checkpoint: dict[str, Any] | None = None) -> None:
        self.ctx = ctx
        self.algo = algorithm
        self.strategy = strategy or ServerStrategy()
        self.callbacks = list(callbacks or [])
        self.writer = writer  # server only
        self.store = store  # server only, when per-client state is in use
        self.checkpoint = checkpoint  # server, when resuming: the state to continue from
        self.wall_before = 0.0  # wall seconds of the run before a resume

    # -- the run --------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        ctx, link, fed, checkpoint = self.ctx, self.ctx.link, self.ctx.cfg.federation, self.checkpoint
        wall0 = self._wall0 = time.perf_counter()
        start = link.share(0 if checkpoint is None else checkpoint["round"] + 1)
        # One-off set-up traffic and work (kind init, distillation) is charged on a
        # fresh start only: a resumed run's ledger must equal the uninterrupted one's.
        ctx.fresh_start = start == 0
        for cb in self.callbacks:
            cb.on_setup(ctx)
        self.algo.setup()
        self.numel = sum(p.numel() for p in self.algo.params)
        if checkpoint is not None:
            self._restore(checkpoint)
        try:
            for rnd in range(start, fed.rounds):
                self.run_round(rnd)
            peaks = link.gather(peak_memory_bytes(ctx.device))
            if not ctx.rt.is_server:
                return None
            summary = self._summary(time.perf_counter() - wall0, peaks, checkpoint)
            for cb in self.callbacks:
                cb.on_end(summary)
            self.writer.summary(summary)
            return summary
        finally:
            for cb in self.callbacks:
                cb.close()

    def _restore(self, ck: dict[str, Any]) -> None:
        """Server: the global state, the algorithm's and strategy's extras, client state."""
        if not self.ctx.rt.is_server:
            return
        state = ck["state"]
        unflatten_into(state["trainable"].to(self.ctx.device), self.algo.params)
        self.algo.load_state_dict(state)
        self.strategy.load_state_dict(ck.get("strategy", {}))
        if self.store is not None:
            self.store.load_state_dict(ck.get("clients", {}))
        self.wall_before = float(ck.get("wall_seconds", 0.0))

    def checkpoint_state(self, rnd: int) -> dict[str, Any]:
        """What a resumed run needs, as of the end of round `rnd`."""
        ck: dict[str, Any] = {"round": rnd,
                              "state": {"trainable": flatten(self.algo.params).cpu(), **self.algo.state_dict()},
                              "wall_seconds": self.wall_before + time.perf_counter() - self._wall0}
        strategy = self.strategy.state_dict()
        if strategy:
            ck["strategy"] = strategy
        if self.store is not None:
            ck["clients"] = self.store.state_dict()
        return ck

    # -- one round --------------------------------------------------------------
    def run_round(self, rnd: int) -> None:
        ctx, link, cfg, algo = self.ctx, self.ctx.link, self.ctx.cfg, self.algo
        fed = cfg.federation
        link.begin_round(rnd)
        fault_injection(ctx.rt.rank, rnd)
        t0 = time.perf_counter()
        sampled = sample_clients(fed.num_clients, fed.clients_per_round, cfg.seed, rnd, fed.over_selection)
        for cb in self.callbacks:
            cb.on_round_start(rnd, sampled)
        algo.before_round(rnd, sampled)
        glob = self._download(sampled)
        agg = Aggregator(link, fed, ctx.buffers, sampled, self.numel, kind=algo.update_kind)
        for c in ctx.rt.clients_here(sampled):
            if drops_out(cfg.seed, rnd, c, fed.dropout):
                agg.add(ClientUpdate(c, None))
                continue
            unflatten_into(glob, algo.params)
            seed_torch(cfg.seed, rnd, c)  # dropout masks and any local randomness: per client, not per rank
            agg.add(self._update(c, algo.train_client(c, rnd), glob))
        if ctx.rt.is_server:
            algo.serve(rnd, ctx.live(rnd, sampled))
        mean, stats = agg.finish()
        if ctx.rt.is_server and mean is not None:
            self.strategy.apply(algo.params, mean, rnd)
        self._return_state(sampled)
        algo.after_round(rnd, sampled)
        if ctx.rt.is_server:
            self._close_round(rnd, sampled, stats, t0)

    def _download(self, sampled: list[int]) -> torch.Tensor:
        """The global state to every sampled client, as they decode it; their state to their ranks."""
        ctx, params = self.ctx, self.algo.params
        flat = flatten(params) if ctx.rt.is_server else torch.empty(
            self.numel, dtype=params[0].dtype, device=ctx.device)
        glob = ctx.link.broadcast(flat, kind=self.algo.model_kind, clients=sampled)
        if ctx.state.enabled:
            self._send_state(sampled)
        return glob

    def _update(self, client: int, stats: LocalStats, glob: torch.Tensor) -> ClientUpdate:
        """A client's upload as the server decodes it, weighted by its dataset size,
        with its emulated time so far plus the upload's."""
        ctx, link = self.ctx, self.ctx.link
        weight = ctx.data.client_size(client)
        link.charge_compute(client, stats.flops)
        state = ctx.state.of(client) if ctx.state.enabled else None
        sent = link.encode(UP, self.algo.update_kind, flatten(self.algo.params), client, reference=glob,
                           state=state)
        seconds = link.elapsed(client) + link.seconds(client, UP, sent.nbytes)
        return ClientUpdate(client, sent.received, num_samples=weight,
                            loss_sum=stats.loss_sum / max(1, stats.num_samples) * weight, flops=stats.flops,
                            seconds=seconds, up_bytes=sent.nbytes)

    # -- per-client state: to the hosting rank and back (control plane, uncharged) --
    def _send_state(self, sampled: list[int]) -> None:
        ctx, link = self.ctx, self.ctx.link
        ctx.state.clear()
        if ctx.rt.is_server:
            for c in sampled:
                link.send_object(self.store.get(c), ctx.rt.rank_of_client(c))
        else:
            for c in ctx.rt.clients_here(sampled):
                ctx.state.load(c, link.recv_object(0))

    def _return_state(self, sampled: list[int]) -> None:
        ctx, link = self.ctx, self.ctx.link
        if not ctx.state.enabled:
            return
        if ctx.rt.is_server:
            for c in sampled:
                state = link.recv_object(ctx.rt.rank_of_client(c))
                if state:
                    self.store.put(c, state)
        else:
            for c in ctx.rt.clients_here(sampled):
                link.send_object(ctx.state.take(c), 0)

    # -- closing a round (server) -------------------------------------------------
    def due(self, rnd: int) -> bool:
        fed = self.ctx.cfg.federation
        return (rnd + 1) % fed.eval_every == 0 or rnd == fed.rounds - 1

    def evaluate(self) -> dict[str, float]:
        model = self.algo.eval_model()
        out = self.ctx.evaluate(model)
        for cb in self.callbacks:
            out.update(cb.evaluate(model))
        return out

    def _close_round(self, rnd: int, sampled: list[int], stats: dict[int, dict[str, float]], t0: float) -> None:
        fed = self.ctx.cfg.federation
        ledger = self.ctx.link.ledger
        dropped = {c for c, s in stats.items() if s["arrived"] <= 0}
        totals = ledger.close_round(rnd, excluded=dropped)
        stragglers = fed.deadline_s is not None and any(s["seconds"] > fed.deadline_s for s in stats.values())
        if stragglers:  # the server waited until the deadline
            totals.emulated_seconds = max(totals.emulated_seconds, fed.deadline_s)
        weight = sum(s["num_samples"] for c, s in stats.items() if c not in dropped)
        loss = sum(s["loss_sum"] for c, s in stats.items() if c not in dropped) / weight if weight else math.nan
        row: dict[str, Any] = {"round": rnd, self.ctx.task.score: None, "loss": loss}
        if self.due(rnd):
            row.update(self.evaluate())
        row.update({
            "bytes_up": totals.bytes_up, "bytes_down": totals.bytes_down,
            "transport_bytes": totals.transport_bytes, "emulated_seconds": totals.emulated_seconds,
            "client_flops": totals.client_flops, "server_flops": totals.server_flops,
            "wall_seconds": time.perf_counter() - t0, "bytes_by_kind": totals.bytes_by_kind,
            "sampled": len(sampled), "arrived": len(sampled) - len(dropped),
        })
        for cb in self.callbacks:
            cb.on_round_end(rnd, row)
        if self.store is not None and self.ctx.cfg.output.checkpoint:
            self.store.committed()

    def _summary(self, wall: float, peaks: list[int], ck: dict | None) -> dict[str, Any]:
        cfg, score = self.ctx.cfg, self.ctx.task.score
        rows = self.writer.read_metrics()
        evaluated = [r for r in rows if r.get(score) is not None]
        final = evaluated[-1] if evaluated else {}
        summary: dict[str, Any] = {
            "name": cfg.name, "algorithm": cfg.algorithm, "method": cfg.method.name,
            "model": cfg.model.name, "data": cfg.data.name, "partition": cfg.data.partition,
            "rounds": len(rows), f"final_{score}": final.get(score),
            f"best_{score}": (max if self.ctx.task.higher_is_better else min)(
                (r[score] for r in evaluated), default=None),
            "final_loss": rows[-1]["loss"] if rows else None,
            "total_bytes_up": sum(r["bytes_up"] for r in rows),
            "total_bytes_down": sum(r["bytes_down"] for r in rows),
            "total_transport_bytes": sum(r["transport_bytes"] for r in rows),
            "total_client_flops": sum(r["client_flops"] for r in rows),
            "total_server_flops": sum(r["server_flops"] for r in rows),
            "emulated_seconds": sum(r["emulated_seconds"] for r in rows),
            "wall_seconds": self.wall_before + wall,
            "world_size": self.ctx.rt.world_size, "num_clients": cfg.federation.num_clients,
            "peak_memory_bytes": peaks, "resumed": ck is not None,
        }
        if self.store is not None:
            summary["client_state"] = {"clients": len(self.store), "digest": self.store.digest(),
                                       "spills": self.store.spills}
        summary.update(self.algo.report())
        return summary
