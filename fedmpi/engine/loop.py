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

import os
import signal
import time
from typing import Any

import torch

from fedmpi.engine.aggregate import ClientUpdate, RoundSum
from fedmpi.engine.algorithm import Algorithm
from fedmpi.engine.callbacks import Callback
from fedmpi.engine.context import Context
from fedmpi.engine.downlink import DeltaDownlink
from fedmpi.engine.outputs import RunWriter, read_jsonl
from fedmpi.engine.sampling import drops_out, sample_clients
from fedmpi.engine.training import LocalStats
from fedmpi.engine.uplink import Uplink
from fedmpi.metering.ledger import UP
from fedmpi.metering.client_memory import enforce_cap, heaviest
from fedmpi.metering.memory import peak_memory_bytes
from fedmpi.net.flat import flatten, unflatten_into
from fedmpi.runtime.clients import balanced
from fedmpi.seeding import seed_torch
from fedmpi.signals import Stopped
from fedmpi.state.store import ClientStateStore
from fedmpi.strategies.bundle import Strategies


NO_ARRIVALS = "no client arrived this round (all dropped out or cut by the deadline): no training loss"


def fault_injection(rank: int, rnd: int) -> None:
    """Tests of failure handling: FEDMPI_KILL_AT_ROUND=r [FEDMPI_KILL_RANK=k]
    SIGKILLs rank k (default 0) as round r starts, like a node dying mid-job."""
    at = os.environ.get("FEDMPI_KILL_AT_ROUND")
    if at is not None and int(at) == rnd and int(os.environ.get("FEDMPI_KILL_RANK", 0)) == rank:
        os.kill(os.getpid(), signal.SIGKILL)


class SyncEngine:
    def __init__(self, ctx: Context, algorithm: Algorithm, strategies: Strategies | None = None,
                 callbacks: list[Callback] | None = None, writer: RunWriter | None = None,
                 store: ClientStateStore | None = None, checkpoint: dict[str, Any] | None = None) -> None:
        self.ctx = ctx
        self.algo = algorithm
        self.strategies = strategies or Strategies.default()
        self.uplink = Uplink(ctx.link, algorithm.update_kind, self.strategies.aggregator, self.strategies.privacy)
        self.downlink = DeltaDownlink(ctx.link, ctx.cfg) if ctx.cfg.transport.down_delta else None
        self.callbacks = list(callbacks or [])
        self.writer = writer  # server only
        self.store = store  # server only, when per-client state is in use
        self.checkpoint = checkpoint  # server, when resuming: the state to continue from
        self.wall_before = 0.0  # wall seconds of the run before a resume
        self.pending: tuple[int, dict[str, Any], float] | None = None  # server: a closed round not yet published

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
        self.strategies.client.setup(self.algo.params)
        if checkpoint is not None:
            self._restore(checkpoint)
        try:
            for rnd in range(start, fed.rounds):
                self.run_round(rnd)
            if ctx.rt.is_server:
                self._publish()
            peaks = link.gather(peak_memory_bytes(ctx.device))
            needs = link.gather(ctx.memory.heaviest)
            if not ctx.rt.is_server:
                return None
            summary = self._summary(time.perf_counter() - wall0, peaks, checkpoint)
            need = heaviest(needs)  # the heaviest client step measured (metering/client_memory.py)
            summary["client_memory"] = need.as_dict() if need is not None else None
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
        self.strategies.load_state_dict(ck.get("strategies", {}))
        if self.downlink is not None:
            self.downlink.load_state_dict(ck.get("downlink", {}), self.ctx.device)
        if self.store is not None:
            self.store.load_state_dict(ck.get("clients", {}))
        self.wall_before = float(ck.get("wall_seconds", 0.0))

    def checkpoint_state(self, rnd: int) -> dict[str, Any]:
        """What a resumed run needs, as of the end of round `rnd`."""
        ck: dict[str, Any] = {"round": rnd,
                              "state": {"trainable": flatten(self.algo.params).cpu(), **self.algo.state_dict()},
                              "wall_seconds": self.wall_before + time.perf_counter() - self._wall0}
        strategies = self.strategies.state_dict()
        if strategies:
            ck["strategies"] = strategies
        if self.store is not None:
            ck["clients"] = self.store.state_dict()
        if self.downlink is not None:
            ck["downlink"] = self.downlink.state_dict()
        return ck

    # -- one round --------------------------------------------------------------
    def run_round(self, rnd: int) -> None:
        ctx, link, cfg, algo, cs = self.ctx, self.ctx.link, self.ctx.cfg, self.algo, self.strategies.client
        fed = cfg.federation
        link.begin_round(rnd)
        t0 = time.perf_counter()
        if not (ctx.rt.is_server and self.overlap):
            fault_injection(ctx.rt.rank, rnd)
        sampled = sample_clients(fed.num_clients, fed.clients_per_round, cfg.seed, rnd, fed.over_selection,
                                 fed.sampling, ctx.sampling_quota)
        ctx.rt.assignment = self.assign(sampled)
        try:
            for cb in self.callbacks:
                cb.on_round_start(rnd, sampled)
        except Stopped:
            # A stop at this round boundary (GracefulStop): the last round's row and
            # checkpoint, still pending when evaluation overlaps, are written first.
            if ctx.rt.is_server:
                self._publish(t0)
            raise
        algo.before_round(rnd, sampled)
        glob, extra_down = self._download(sampled)
        if ctx.rt.is_server and self.overlap:
            # The server has nothing to do until the updates arrive: it evaluates and
            # publishes the last round (its model is still in `params`) while clients train.
            self._publish(t0)
            fault_injection(ctx.rt.rank, rnd)
        agg = self.uplink.aggregator_for(fed, ctx.buffers, sampled, self.numel, cs.extra_kind)
        ctx.grad_hook = self._grad_hook if cs.name != "none" else None
        for c in ctx.rt.clients_here(sampled):
            if drops_out(cfg.seed, rnd, c, fed.dropout):
                agg.add(ClientUpdate(c, None))
                continue
            unflatten_into(glob, algo.params)
            seed_torch(cfg.seed, rnd, c)  # dropout masks and any local randomness: per client, not per rank
            state = ctx.state.of(c) if ctx.state.enabled else None
            cs.begin(algo.params, glob, state, extra_down)
            stats = algo.train_client(c, rnd)
            agg.add(self._update(c, rnd, stats, glob, cs.end(algo.params, state), state))
        ctx.grad_hook = None
        if ctx.rt.is_server:
            algo.serve(rnd, ctx.live(rnd, sampled))
        result = agg.finish()
        enforce_cap(link, ctx.memory, cfg.compute.client_memory_mb)
        if ctx.rt.is_server:
            self._apply(rnd, result)
        self._return_state(sampled, result)
        algo.after_round(rnd, sampled)
        if ctx.rt.is_server:
            self._close_round(rnd, sampled, result.stats, t0)
            if not self.overlap:
                self._publish()

    def assign(self, sampled: list[int]) -> dict[int, int] | None:
        """This round's client -> rank (every rank computes the same plan; None: by id)."""
        if self.ctx.cfg.runtime.assignment != "balanced":
            return None
        return balanced(sampled, self.algo.client_work, range(1, self.ctx.rt.world_size))

    @property
    def overlap(self) -> bool:
        """Whether the server evaluates round r while the clients train round r+1: only when
        it is idle between sending the global state and receiving the updates (no `serve`, no
        collective before/after-round work), nothing it checkpoints changes on the way
        down (a delta downlink records who holds which model), and no plug-in evaluates
        (the backdoor's ASR counts the malicious clients of the round it scores)."""
        cls = type(self.algo)
        idle = all(getattr(cls, hook) is getattr(Algorithm, hook) for hook in ("serve", "before_round", "after_round"))
        plugins_evaluate = any(type(cb).evaluate is not Callback.evaluate for cb in self.callbacks)
        return (self.ctx.cfg.runtime.overlap_evaluation and cls.overlaps_evaluation and idle
                and self.downlink is None and not plugins_evaluate)

    def _grad_hook(self) -> int:
        """Between a local step's backward and its update: the client strategy's correction
        (FedProx's proximal gradient, SCAFFOLD's variates); returns the FLOPs it spent."""
        self.strategies.client.after_backward(self.algo.params)
        return self.strategies.client.flops_per_step(self.numel)

    def _apply(self, rnd: int, result: RoundSum) -> None:
        """Server: the new global state through the server strategy, then the client strategy's."""
        params = self.algo.params
        new = self.uplink.new_global(params, result, rnd)
        if new is not None:
            self.strategies.server.apply(params, new, rnd)
        self.strategies.client.absorb(result.extra, len(result.arrived))

    def _download(self, sampled: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The global state to every sampled client, as they decode it (and a client strategy's
        extra payload, and DP's current clipping bound when it adapts); their state to their ranks."""
        ctx, params, link = self.ctx, self.algo.params, self.ctx.link
        flat = flatten(params) if ctx.rt.is_server else torch.empty(
            self.numel, dtype=params[0].dtype, device=ctx.device)
        if self.downlink is not None:
            glob = self.downlink.send(flat, self.algo.model_kind, self.ctx.link.round, sampled)
        else:
            glob = link.broadcast(flat, kind=self.algo.model_kind, clients=sampled)
        extra = None
        cs = self.strategies.client
        if cs.extra_kind is not None:
            payload = cs.extra_download() if ctx.rt.is_server else torch.empty(
                self.numel, dtype=torch.float32, device=ctx.device)
            extra = link.broadcast(payload.clone() if ctx.rt.is_server else payload, kind=cs.extra_kind,
                                   clients=sampled)
        dp = self.strategies.dp
        if dp is not None and dp.adaptive is not None:  # clients clip to this round's C
            bound = torch.tensor([dp.clip if ctx.rt.is_server else 0.0], dtype=torch.float64, device=ctx.device)
            dp.adaptive.clip = float(link.broadcast(bound, kind="stats", clients=sampled)[0])
        if ctx.state.enabled:
            self._send_state(sampled)
        return glob, extra

    def _update(self, client: int, rnd: int, stats: LocalStats, glob: torch.Tensor, extra: torch.Tensor | None,
                state: dict | None) -> ClientUpdate:
        """A client's upload as the server decodes it, weighted by its dataset size (1 under DP),
        with its emulated time so far plus the uploads'."""
        ctx, link = self.ctx, self.ctx.link
        size = ctx.data.client_size(client)
        link.charge_compute(client, stats.flops)
        sent = self.uplink.send(client, rnd, flatten(self.algo.params), glob, state)
        seconds = link.elapsed(client) + link.seconds(client, UP, sent.nbytes)
        extra_bytes = 0
        if extra is not None:
            up = link.encode(UP, self.strategies.client.extra_kind, extra, client, state=state)
            extra, extra_bytes = up.received, up.nbytes
            seconds += link.seconds(client, UP, extra_bytes)
        return ClientUpdate(client, sent.value, num_samples=1 if self.uplink.privacy else size,
                            loss_sum=stats.loss_sum / max(1, stats.num_samples) * size, flops=stats.flops,
                            seconds=seconds, up_bytes=sent.nbytes, extra=extra, extra_bytes=extra_bytes,
                            bit=sent.bit)

    # -- per-client state: to the hosting rank and back (control plane, uncharged) --
    def _send_state(self, sampled: list[int]) -> None:
        ctx, link = self.ctx, self.ctx.link
        ctx.state.clear()
        if ctx.rt.is_server:
            for c in sampled:
                link.send_state(self.store.get(c), ctx.rt.rank_of_client(c))
        else:
            for c in ctx.rt.clients_here(sampled):
                ctx.state.load(c, link.recv_state(0))

    def _return_state(self, sampled: list[int], result: RoundSum | None) -> None:
        """Back to the server's store; a client whose update did not count (dropped, cut at
        the deadline or by over-selection) keeps its old state, as if it never ran."""
        ctx, link = self.ctx, self.ctx.link
        if not ctx.state.enabled:
            return
        if ctx.rt.is_server:
            arrived = set(result.arrived)
            for c in sampled:
                state = link.recv_state(ctx.rt.rank_of_client(c))
                if state and c in arrived:
                    self.store.put(c, state, owned=True)
        else:
            for c in ctx.rt.clients_here(sampled):
                link.send_state(ctx.state.take(c), 0)

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
        """Server: the Ledger closes the round (before any row of the next); its metrics
        row waits in `pending` for the evaluation."""
        fed = self.ctx.cfg.federation
        ledger = self.ctx.link.ledger
        dropped = {c for c, s in stats.items() if s["arrived"] <= 0}
        totals = ledger.close_round(rnd, excluded=dropped)
        stragglers = fed.deadline_s is not None and any(s["seconds"] > fed.deadline_s for s in stats.values())
        if stragglers:  # the server waited until the deadline
            totals.emulated_seconds = max(totals.emulated_seconds, fed.deadline_s)
        weight = sum(s["num_samples"] for c, s in stats.items() if c not in dropped)
        loss = sum(s["loss_sum"] for c, s in stats.items() if c not in dropped) / weight if weight else None
        row: dict[str, Any] = {"round": rnd, self.ctx.task.score: None, "loss": loss}
        if loss is None:  # no NaN in metrics.jsonl: null, and why
            row["loss_note"] = NO_ARRIVALS
        row.update({
            "bytes_up": totals.bytes_up, "bytes_down": totals.bytes_down,
            "transport_bytes": totals.transport_bytes, "emulated_seconds": totals.emulated_seconds,
            "client_flops": totals.client_flops, "server_flops": totals.server_flops,
            "wall_seconds": None, "bytes_by_kind": totals.bytes_by_kind,
            "sampled": len(sampled), "arrived": len(sampled) - len(dropped),
        })
        self.pending = (rnd, row, t0)

    def _publish(self, until: float | None = None) -> None:
        """Server: the pending round's evaluation (when due), then its row to the callbacks
        (metrics, checkpoint, tracker, progress). `until`: when the next round began, which
        ends this round's share of the wall clock (default: now, after the evaluation)."""
        if self.pending is None:
            return
        rnd, row, t0 = self.pending
        self.pending = None
        if self.due(rnd):
            metrics = self.evaluate()
            dp = self.strategies.dp
            if dp is not None:
                metrics["epsilon"] = self.epsilon(rnd + 1)
            head = {k: row[k] for k in ("round", self.ctx.task.score, "loss")}
            row = {**head, **metrics, **{k: v for k, v in row.items() if k not in head}}
        row["wall_seconds"] = (time.perf_counter() if until is None else until) - t0
        for cb in self.callbacks:
            cb.on_round_end(rnd, row)
        if self.store is not None and self.ctx.cfg.output.checkpoint:
            self.store.committed()

    def _compression(self) -> dict[str, Any] | None:
        """Codecs and bytes vs their fp32 size per direction, from the ledger (None: all fp32)."""
        transport = self.ctx.link.transport
        codecs = transport.describe()
        if set(codecs.values()) == {"fp32"} and not self.ctx.cfg.transport.down_delta:
            return None
        sent = {"up": 0, "down": 0}
        raw = {"up": 0, "down": 0}
        for row in read_jsonl(self.writer.dir / "ledger.jsonl"):
            if row["direction"] in sent:
                sent[row["direction"]] += row["bytes"]
                raw[row["direction"]] += row.get("raw_bytes", row["bytes"])
        out: dict[str, Any] = {"codecs": codecs}
        for d in ("up", "down"):
            out[f"bytes_{d}"], out[f"fp32_bytes_{d}"] = sent[d], raw[d]
            out[f"ratio_{d}"] = raw[d] / sent[d] if sent[d] else None
        return out

    def epsilon(self, rounds: int) -> float:
        """DP spent after `rounds` rounds, at strategy.privacy.delta (an established accountant)."""
        fed = self.ctx.cfg.federation
        return self.strategies.dp.spent(rounds, fed.clients_per_round, fed.num_clients, fed.sampling)

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
            **({"final_loss_note": rows[-1].get("loss_note", "no loss")}
               if rows and rows[-1]["loss"] is None else {}),
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
        if self.strategies.dp is not None:
            dp = self.strategies.dp
            summary["epsilon"] = self.epsilon(len(rows))
            summary["privacy"] = {"delta": dp.options.delta, "noise_multiplier": dp.options.noise_multiplier,
                                  "clip": dp.clip, "noise": dp.options.noise,
                                  "sampling": self.ctx.cfg.federation.sampling,
                                  "accountant": "dp-accounting RDP"}
        compression = self._compression()
        if compression:
            summary["compression"] = compression
        if self.store is not None:
            summary["client_state"] = {"clients": len(self.store), "digest": self.store.digest(),
                                       "spills": self.store.spills}
        summary.update(self.algo.report())
        return summary
