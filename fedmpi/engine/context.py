"""What algorithms, plug-ins and callbacks get: a small context, not the experiment."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from fedmpi.data.federated import FederatedData
from fedmpi.engine.sampling import SampleQuota, drops_out
from fedmpi.engine.training import LocalStats, make_optimizer, train_steps
from fedmpi.metering.client_memory import ClientMemoryMeter
from fedmpi.metering.flops import FlopMeter
from fedmpi.net.link import Link
from fedmpi.runtime import Runtime
from fedmpi.state.store import ClientState
from fedmpi.tasks.base import Task


@dataclass
class Context:
    cfg: Any  # ExperimentConfig
    rt: Runtime
    link: Link
    data: FederatedData
    task: Task
    meter: FlopMeter
    model: nn.Module  # the model as built (backbone + method); an algorithm may train another
    state: ClientState  # per-client state, on the rank hosting the client this round
    fresh_start: bool = True  # False when resuming: one-off set-up traffic is not charged again
    run_dir: Any = None  # the run folder (server), for plug-ins that write files
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # work buffers reused round after round
    grad_hook: Any = None  # set by the engine while a client strategy shapes local steps
    sampling_quota: SampleQuota | None = None  # clients every sample must hold some of (set by plug-ins)
    memory: ClientMemoryMeter = field(default_factory=ClientMemoryMeter)  # clients' training memory

    # -- helpers every algorithm uses ----------------------------------------
    @property
    def device(self) -> torch.device:
        return self.rt.device

    def client_batches(self, client: int, rnd: int, steps: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """`steps` (default train.local_steps) shuffled batches of the client's data."""
        t = self.cfg.train
        return self.data.client_batches(client, rnd, t.local_steps if steps is None else steps, t.batch_size)

    def optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return make_optimizer(params, self.cfg.train)

    def train(self, model: nn.Module, batches, optimizer: torch.optim.Optimizer, tag: str = "train",
              stats: LocalStats | None = None, loss=None) -> LocalStats:
        """The metered local loop with the task's loss (or `loss(model, batch)`)."""
        return train_steps(model, batches, optimizer, self.meter, self.device, loss or self.task.loss,
                           self.task.samples, tag=tag, stats=stats, after_backward=self.grad_hook,
                           memory=self.memory)

    def live(self, rnd: int, sampled: list[int]) -> list[int]:
        """Sampled clients that do not drop out this round (every rank can tell)."""
        p = self.cfg.federation.dropout
        return [c for c in sampled if not drops_out(self.cfg.seed, rnd, c, p)]

    def evaluate(self, model: nn.Module, encoded=None) -> dict[str, float]:
        """The task's metrics on the test split (or on `encoded`)."""
        return self.task.evaluate(model, self.data.test_batches(self.cfg.train.eval_batch_size, encoded),
                                  self.device)
