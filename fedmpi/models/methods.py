"""Fine-tuning methods: which parameters train, and so which travel.

A method is the seam between a backbone and federated training: after
`apply`, exactly the parameters with requires_grad form the state that
clients download, train and upload. Each method declares its options
(`Options`, read from the config's `method` section); the names live in
fedmpi.registry.METHODS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fedmpi.options import option


@dataclass
class MethodOptions:
    name: str = option("full")


class Method:
    name: ClassVar[str] = "method"
    Options: ClassVar[type] = MethodOptions

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Refuse a config this method cannot serve (from the config alone)."""

    @classmethod
    def apply(cls, model: nn.Module, opts: Any) -> nn.Module:
        raise NotImplementedError


class Full(Method):
    """Full fine-tuning: every parameter trains and travels."""
    name = "full"

    @classmethod
    def apply(cls, model: nn.Module, opts: Any) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model


def apply_method(model: nn.Module, opts: Any) -> nn.Module:
    from fedmpi.registry import METHODS

    return METHODS.get(opts.name).apply(model, opts)


def trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The travelling state, in a fixed order (named_parameters order)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
