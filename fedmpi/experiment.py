"""Building an experiment from its config: the composition root.

`prepare` does all the work that can fail on bad input (data, partition,
model, the algorithm's checks) before any process group exists, so a user
error ends every rank with one clear message before training starts.
`build` then wires the pieces — Link, Ledger, data, context, algorithm,
strategy, plug-ins and callbacks — into a round engine on each rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from fedmpi.config import ExperimentConfig
from fedmpi.data.federated import FederatedData
from fedmpi.data.splits import Dataset
from fedmpi.engine.callbacks import Callback, Checkpointer, MetricsLog, Progress
from fedmpi.engine.context import Context
from fedmpi.engine.loop import SyncEngine
from fedmpi.engine.outputs import RunWriter, load_checkpoint
from fedmpi.engine.stopping import GracefulStop
from fedmpi.metering.flops import FlopMeter
from fedmpi.metering.ledger import Ledger
from fedmpi.models.methods import apply_method
from fedmpi.net.clock import make_clock
from fedmpi.net.codec import Transport
from fedmpi.net.link import Link
from fedmpi.net.profiles import client_profiles, client_speeds
from fedmpi.plugins import backdoor, generations, tracker
from fedmpi.plugins.init_sync import InitialSync
from fedmpi.registry import ALGORITHMS, TASKS
from fedmpi.runtime import Runtime
from fedmpi.state.store import ClientState, ClientStateStore, return_freed_memory_promptly
from fedmpi.strategies.bundle import Strategies
from fedmpi.tasks.base import Task


@dataclass
class Prepared:
    """What every rank builds identically from the config, before any collective."""
    task: Task
    dataset: Dataset
    parts: list[np.ndarray]
    model: nn.Module
    train_encoded: Any = None  # the whole encoded training split, from the cache (data/cache.py)
    test_encoded: Any = None
    _tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """Loaded on first use: a rank whose encodings come from the cache never needs it
        (importing and loading a tokenizer is a second or more of every rank's start-up)."""
        if self._tokenizer is None:
            self._tokenizer = self.task.tokenizer()
        return self._tokenizer

    def federated_data(self, seed: int) -> FederatedData:
        encoder = None

        def encode(split):
            nonlocal encoder
            if encoder is None:
                encoder = self.task.encoder(self.tokenizer)
            return encoder(split)

        return FederatedData(self.dataset, self.parts, encode, seed, train=self.train_encoded,
                             test=self.test_encoded)


def preflight(cfg: ExperimentConfig) -> tuple[Task, Dataset, list[np.ndarray]]:
    """Every check that needs the data but no model: the launcher runs it once
    before starting any rank, and `prepare` on every rank."""
    task = TASKS.get(cfg.task)(cfg)
    dataset = task.load_data()
    parts = task.partition(dataset)
    if cfg.data.only_client is not None:  # the local-only baseline: that client's part, alone
        parts = [parts[cfg.data.only_client]]
    backdoor.check(cfg.attack, dataset, cfg.federation)
    tracker.check(cfg.output.tracker)
    return task, dataset, parts


def prepare(cfg: ExperimentConfig, checked: tuple[Task, Dataset, list[np.ndarray]] | None = None) -> Prepared:
    """Everything a rank builds from the config (`checked`: what `preflight` already returned)."""
    algorithm = ALGORITHMS.get(cfg.algorithm)
    task, dataset, parts = checked or preflight(cfg)
    train, test = task.cached_encodings(dataset)
    model = task.build_model(dataset)
    if not algorithm.builds_own_method:
        model = apply_method(model, cfg.method)
    algorithm.check_model(cfg, model)
    prep = Prepared(task, dataset, parts, model, train, test)
    if train is None or test is None:
        prep.tokenizer  # noqa: B018 - a tokenizer that does not load is a user error: find it before any rank starts
    return prep


def build(cfg: ExperimentConfig, rt: Runtime, prep: Prepared, resume: bool = False) -> SyncEngine:
    """The round engine of this rank (the server's with its run folder open, and the
    checkpoint to continue from when resuming)."""
    n = cfg.federation.num_clients
    ck = load_checkpoint(cfg) if (rt.is_server and resume) else None
    writer = RunWriter(cfg, resume_round=None if ck is None else ck["round"]) if rt.is_server else None
    ledger = Ledger(writer.ledger_path) if writer is not None else None
    link = Link(rt, client_profiles(cfg.network, n, cfg.seed), make_clock(cfg.network.clock),
                client_speeds(cfg.compute.client_gflops, cfg.compute.heterogeneity, n, cfg.seed),
                cfg.compute.server_gflops * 1e9, Transport.from_config(cfg.transport), cfg.seed, ledger,
                cfg.network.server_up_mbps, cfg.network.server_down_mbps)
    data = prep.federated_data(cfg.seed)
    algorithm_cls = ALGORITHMS.get(cfg.algorithm)
    strategies = Strategies.from_config(cfg)
    uses_state = (algorithm_cls.uses_client_state or strategies.uses_client_state
                  or bool(getattr(cfg.transport.up, "error_feedback", False)))
    ctx = Context(cfg, rt, link, data, prep.task, FlopMeter(), prep.model.to(rt.device), ClientState(uses_state),
                  run_dir=writer.dir if writer is not None else None)
    algorithm = algorithm_cls(ctx)
    plugins: list[Callback] = [InitialSync()]
    if cfg.task == "causal_lm":  # sample generations, FlowerTune's communication cost, the data report
        plugins += generations.causal_lm_plugins(ctx)
    if cfg.attack.malicious_fraction > 0:
        plugins.append(backdoor.BackdoorAttack(ctx))
    store = None
    if rt.is_server and uses_state:
        return_freed_memory_promptly()
        store = ClientStateStore(int(cfg.state.memory_mb * 2**20), writer.dir / "client_state",
                                 keep_superseded=cfg.output.checkpoint)
    engine = SyncEngine(ctx, algorithm, strategies, callbacks=plugins, writer=writer, store=store, checkpoint=ck)
    # Every rank: stop at a round boundary on a signal (fedmpi.signals), checkpoint written.
    engine.callbacks.append(GracefulStop(rt, writer, engine.checkpoint_state, checkpointed=cfg.output.checkpoint))
    if writer is not None:
        engine.callbacks.append(MetricsLog(writer, ledger))
        if cfg.output.checkpoint:
            engine.callbacks.append(Checkpointer(writer, engine.checkpoint_state))
        if cfg.output.tracker:
            engine.callbacks.append(tracker.make_tracker(cfg, writer.dir))
        if cfg.output.progress:
            engine.callbacks.append(Progress(cfg.name, cfg.federation.rounds, prep.task.score))
    return engine


def run(cfg: ExperimentConfig, rt: Runtime, prep: Prepared, resume: bool = False) -> dict[str, Any] | None:
    """Run the experiment on this rank; the server returns the summary."""
    return build(cfg, rt, prep, resume).run()
