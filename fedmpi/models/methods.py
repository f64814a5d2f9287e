"""Fine-tuning methods: which parameters train, and so which travel.

`apply_method` is the seam between a backbone and federated training: after
it, exactly the parameters with requires_grad form the state that clients
download, train and upload. PEFT methods plug in here.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fedmpi.config import ConfigError, MethodConfig

MethodFn = Callable[[nn.Module, MethodConfig], nn.Module]
_METHODS: dict[str, MethodFn] = {}


def register(name: str) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        _METHODS[name] = fn
        return fn
    return deco


@register("full")
def full(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _load_builtin_methods() -> None:
    try:  # PEFT methods live in their own module.
        import fedmpi.models.peft_methods  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "fedmpi.models.peft_methods":
            raise


def apply_method(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    _load_builtin_methods()
    if cfg.name not in _METHODS:
        raise ConfigError(f"method '{cfg.name}' is not available; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[cfg.name](model, cfg)


def trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The travelling state, in a fixed order (named_parameters order)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
