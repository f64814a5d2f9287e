"""Local work shared by algorithms: the optimizer and a metered training loop.

The loss and the sample count of a batch are the task's; the FLOPs of every
forward + backward are the meter's (one count per batch shape, cached), and
those of every optimizer step the formula's (metering/formulas.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from fedmpi.data.federated import to_device
from fedmpi.metering.client_memory import ClientMemoryMeter
from fedmpi.metering.flops import FlopMeter, sequence_length, shape_key
from fedmpi.metering.formulas import optimizer_step_flops

__all__ = ["Batch", "LocalStats", "make_optimizer", "to_device", "train_steps"]

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def make_optimizer(params: list[torch.Tensor], cfg) -> torch.optim.Optimizer:
    """The client optimizer of `train` (TrainConfig): AdamW or SGD. Multi-tensor (`foreach`)
    everywhere: on CPU too, where torch's default is a Python loop over the parameters. It
    runs the same element-wise ops in the same order, so the steps are bitwise the same
    (tests/unit/engine/test_training.py), with less per-parameter Python per client."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


@dataclass
class LocalStats:
    """What one client's local work reports to the engine."""
    num_samples: int = 0  # samples processed
    loss_sum: float = 0.0  # sum over processed samples of the training loss
    flops: int = 0

    def add(self, n: int, loss: float, flops: int) -> None:
        self.num_samples += n
        self.loss_sum += loss * n
        self.flops += flops


def train_steps(model: nn.Module, batches: Iterable[Batch], optimizer: torch.optim.Optimizer,
                meter: FlopMeter, device: torch.device, loss_fn: LossFn, samples: Callable[[Batch], int],
                tag: str = "train", stats: LocalStats | None = None,
                after_backward: Callable[[], int] | None = None,
                memory: ClientMemoryMeter | None = None) -> LocalStats:
    """Forward, backward and step on each batch; FLOPs of fwd+bwd are metered, the step's
    counted, and the step's memory measured (once per batch shape). `after_backward`
    (a client strategy's gradient hook) runs between backward and the step and returns
    the FLOPs it spent."""
    memory = memory or ClientMemoryMeter(enabled=False)
    model.train()
    stats = stats or LocalStats()
    for batch in batches:
        batch = to_device(batch, device)
        optimizer.zero_grad(set_to_none=True)

        def step() -> torch.Tensor:
            loss = loss_fn(model, batch)
            loss.backward()
            return loss

        key = (tag, id(model), shape_key(batch))
        seq = sequence_length(batch)
        length = None if seq is None else ((tag, id(model), seq[0]), seq[1])
        with memory.measure(key, model, optimizer, label=(tag, key[2]), length=length):
            loss, flops = meter.run(key, step, length=length)
            if after_backward is not None:
                flops += after_backward()
            flops += optimizer_step_flops(optimizer) if meter.enabled else 0
            optimizer.step()
        stats.add(samples(batch), float(loss.detach()), flops)
    return stats
