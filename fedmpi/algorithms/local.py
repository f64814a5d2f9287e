"""Local work shared by algorithms: a metered training loop and evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from fedmpi.config import TrainConfig
from fedmpi.metering.flops import FlopMeter, shape_key

Batch = dict[str, torch.Tensor]


def make_optimizer(params: list[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class LocalStats:
    num_samples: int = 0
    loss_sum: float = 0.0  # sum over samples of the training loss
    flops: int = 0


def train_steps(model: nn.Module, batches: Iterable[Batch], optimizer: torch.optim.Optimizer,
                meter: FlopMeter, device: torch.device, tag: str = "train") -> LocalStats:
    """Forward, backward and step on each batch; FLOPs of fwd+bwd are metered."""
    model.train()
    stats = LocalStats()
    for batch in batches:
        batch = to_device(batch, device)
        optimizer.zero_grad(set_to_none=True)

        def step() -> torch.Tensor:
            loss = model(**batch).loss
            loss.backward()
            return loss

        loss, flops = meter.run((tag, id(model), shape_key(batch)), step)
        optimizer.step()
        n = int(batch["labels"].shape[0])
        stats.num_samples += n
        stats.loss_sum += float(loss.detach()) * n
        stats.flops += flops
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
    """Accuracy and mean loss of a classifier over batches."""
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for batch in batches:
        batch = to_device(batch, device)
        out = model(**batch)
        n = int(batch["labels"].shape[0])
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        loss_sum += float(out.loss) * n
        total += n
    return {"accuracy": correct / max(1, total), "test_loss": loss_sum / max(1, total)}


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> torch.Tensor:
    model.eval()
    return torch.cat([model(**to_device(b, device)).logits.argmax(-1).cpu() for b in batches])
