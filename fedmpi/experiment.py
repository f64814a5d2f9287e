"""An experiment: everything built from a config, and the round loop.

`prepare` does all the work that can fail on bad input (data, partition,
model) before any process group exists, so a user error ends every rank
with one clear message before training starts.
"""
from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fedmpi.algorithms import get_algorithm
from fedmpi.algorithms.aggregate import sample_clients
from fedmpi.config import ConfigError, ExperimentConfig
from fedmpi.data.federated import FederatedData
from fedmpi.data.partition import partition
from fedmpi.data.poison import install as install_backdoor
from fedmpi.data.sources import Task, load_task
from fedmpi.metering.flops import FlopMeter
from fedmpi.metering.ledger import Ledger
from fedmpi.metering.memory import peak_memory_bytes
from fedmpi.models.sync import sync_init
from fedmpi.net.clock import make_clock
from fedmpi.net.link import Link
from fedmpi.net.profiles import client_profiles, client_speeds
from fedmpi.outputs import RunWriter, load_checkpoint, read_metrics
from fedmpi.runtime import Runtime


def _fault_injection(rank: int, rnd: int) -> None:
    """Tests of failure handling: FEDMPI_KILL_AT_ROUND=r [FEDMPI_KILL_RANK=k]
    SIGKILLs rank k (default 0) as round r starts, like a node dying mid-job."""
    at = os.environ.get("FEDMPI_KILL_AT_ROUND")
    if at is not None and int(at) == rnd and int(os.environ.get("FEDMPI_KILL_RANK", 0)) == rank:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Prepared:
    """What every rank builds identically from the config, before any collective."""
    task: Task
    parts: list[np.ndarray]
    tokenizer: Any
    model: nn.Module


def prepare(cfg: ExperimentConfig) -> Prepared:
    from fedmpi.models.backbone import build_model, load_tokenizer
    from fedmpi.models.methods import apply_method

    get_algorithm(cfg.algorithm).check(cfg)  # unknown algorithm or bad options: fail now
    task = load_task(cfg.data, cfg.seed)
    parts = partition(task.train.labels, cfg.federation.num_clients, cfg.data.partition,
                      alpha=cfg.data.alpha, shards_per_client=cfg.data.shards_per_client, seed=cfg.seed)
    if task.train.labels.min() < 0:
        raise ConfigError(f"dataset '{cfg.data.name}' has negative labels")
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model, task.num_labels, cfg.seed)
    model = apply_method(model, cfg.method)
    return Prepared(task, parts, tokenizer, model)


class Experiment:
    def __init__(self, cfg: ExperimentConfig, rt: Runtime, prep: Prepared, resume: bool = False) -> None:
        self.cfg, self.rt = cfg, rt
        self.resume = resume
        self.task = prep.task
        self.data = FederatedData(prep.task, prep.parts, prep.tokenizer, cfg.model.max_length, cfg.seed)
        n = cfg.federation.num_clients
        self.profiles = client_profiles(cfg.network, n, cfg.seed)
        self.speeds = client_speeds(cfg.compute.client_gflops, cfg.compute.heterogeneity, n, cfg.seed)
        self.server_speed = cfg.compute.server_gflops * 1e9
        self.meter = FlopMeter()
        self.model = prep.model.to(rt.device)
        # Extra metrics computed on the global model at each evaluation (e.g. attack success rate).
        self.evaluators: list[Callable[[nn.Module], dict[str, float]]] = []
        self.writer: RunWriter | None = None
        self.fresh_start = True  # False once run() found a checkpoint to resume from
        # Work buffers reused round after round, by purpose (the Aggregator's sums):
        # a fresh 182 MB buffer per round costs page faults on every touch.
        self.buffers: dict[str, torch.Tensor] = {}
        self.ledger: Ledger | None = None
        self.link = Link(rt, self.profiles, make_clock(cfg.network.clock), None)
        self.algorithm = get_algorithm(cfg.algorithm)(self)
        install_backdoor(self)  # no-op unless attack.malicious_fraction > 0

    # -- helpers ------------------------------------------------------------
    def _due(self, rnd: int) -> bool:
        rounds = self.cfg.federation.rounds
        return (rnd + 1) % self.cfg.federation.eval_every == 0 or rnd == rounds - 1

    def _open_outputs(self, ck: dict | None) -> None:
        self.writer = RunWriter(self.cfg, resume_round=None if ck is None else ck["round"])
        self.ledger = Ledger(self.writer.ledger_path)
        self.link.ledger = self.ledger

    # -- the loop -------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        cfg, rt, link = self.cfg, self.rt, self.link
        wall0 = time.perf_counter()
        ck = load_checkpoint(cfg) if (rt.is_server and self.resume) else None
        if rt.is_server:
            self._open_outputs(ck)
        start = link.share(0 if ck is None else ck["round"] + 1)
        # One-off set-up traffic and work (kind init, distillation) is charged on a fresh
        # start only: a resumed run's ledger must equal the uninterrupted one's.
        self.fresh_start = start == 0
        sync_init(self, charge=self.fresh_start)  # frozen state a method derived (FeDeRA residual)
        self.algorithm.setup()
        if ck is not None:
            self.algorithm.load_state_dict(ck["state"])
        progress = self._progress(start)
        fed = cfg.federation
        for rnd in range(start, fed.rounds):
            link.round = rnd
            _fault_injection(rt.rank, rnd)
            t0 = time.perf_counter()
            sampled = sample_clients(fed.num_clients, fed.clients_per_round, cfg.seed, rnd, fed.over_selection)
            stats = self.algorithm.run_round(rnd, sampled)
            if rt.is_server:
                self._close_round(rnd, sampled, stats, t0, progress)
        if progress is not None:
            progress.close()
        peaks = link.gather(peak_memory_bytes(rt.device))
        if not rt.is_server:
            return None
        summary = self._summary(time.perf_counter() - wall0, peaks, ck)
        self.writer.summary(summary)
        self.writer.close()
        self.ledger.close()
        return summary

    def _progress(self, start: int):
        if not (self.rt.is_server and self.cfg.output.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.federation.rounds, initial=start, desc=self.cfg.name, unit="round",
                    dynamic_ncols=True)

    def _close_round(self, rnd: int, sampled: list[int], stats: dict[int, dict[str, float]], t0: float,
                     progress) -> None:
        fed = self.cfg.federation
        dropped = {c for c, s in stats.items() if s["arrived"] <= 0}
        totals = self.ledger.close_round(rnd, excluded=dropped)
        stragglers = fed.deadline_s is not None and any(s["seconds"] > fed.deadline_s for s in stats.values())
        if stragglers:  # the server waited until the deadline
            totals.emulated_seconds = max(totals.emulated_seconds, fed.deadline_s)
        weight = sum(s["num_samples"] for c, s in stats.items() if c not in dropped)
        loss = sum(s["loss_sum"] for c, s in stats.items() if c not in dropped) / weight if weight else math.nan
        row: dict[str, Any] = {"round": rnd, "accuracy": None, "loss": loss}
        if self._due(rnd):
            row.update(self.algorithm.evaluate())
        row.update({
            "bytes_up": totals.bytes_up, "bytes_down": totals.bytes_down,
            "transport_bytes": totals.transport_bytes, "emulated_seconds": totals.emulated_seconds,
            "client_flops": totals.client_flops, "server_flops": totals.server_flops,
            "wall_seconds": time.perf_counter() - t0, "bytes_by_kind": totals.bytes_by_kind,
            "sampled": len(sampled), "arrived": len(sampled) - len(dropped),
        })
        self.writer.metrics(row)
        if self.cfg.output.checkpoint:
            self.writer.checkpoint({"round": rnd, "state": self.algorithm.state_dict()})
        if progress is not None:
            acc = row.get("accuracy")
            progress.set_postfix(loss=f"{loss:.3f}", acc="-" if acc is None else f"{acc:.3f}")
            progress.update(1)

    def _summary(self, wall: float, peaks: list[int], ck: dict | None) -> dict[str, Any]:
        rows = read_metrics(self.writer.dir)
        evaluated = [r for r in rows if r.get("accuracy") is not None]
        final = evaluated[-1] if evaluated else {}
        summary: dict[str, Any] = {
            "name": self.cfg.name, "algorithm": self.cfg.algorithm, "method": self.cfg.method.name,
            "model": self.cfg.model.name, "data": self.cfg.data.name, "partition": self.cfg.data.partition,
            "rounds": len(rows), "final_accuracy": final.get("accuracy"),
            "best_accuracy": max((r["accuracy"] for r in evaluated), default=None),
            "final_loss": rows[-1]["loss"] if rows else None,
            "total_bytes_up": sum(r["bytes_up"] for r in rows),
            "total_bytes_down": sum(r["bytes_down"] for r in rows),
            "total_transport_bytes": sum(r["transport_bytes"] for r in rows),
            "total_client_flops": sum(r["client_flops"] for r in rows),
            "total_server_flops": sum(r["server_flops"] for r in rows),
            "emulated_seconds": sum(r["emulated_seconds"] for r in rows),
            "wall_seconds": wall,
            "world_size": self.rt.world_size, "num_clients": self.cfg.federation.num_clients,
            "peak_memory_bytes": peaks, "resumed": ck is not None,
        }
        for key in ("attack_success_rate",):
            if key in final:
                summary[f"final_{key}"] = final[key]
        summary.update(self.algorithm.report())
        return summary
