"""Typed, checked `cfg.options` for the split-learning algorithms.

`options` is a free-form mapping in the config, so each algorithm states the
keys it knows as a dataclass; a typo or a value of the wrong type ends the
run before training with a message naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from fedmpi.config import ConfigError


@dataclass
class SplitOptions:
    split_head_layers: int = 1  # encoder layers in the client head
    split_tail_layers: int = 0  # encoder layers in the client tail (before pooler + classifier)
    prompt_tokens: int = 0  # soft-prompt vectors prepended in the client head


@dataclass
class SplitFedOptions(SplitOptions):
    splitfed_version: str = "v2"  # v2: one shared server body; v1: a body copy per client, averaged


@dataclass
class SFPromptOptions(SplitOptions):
    split_tail_layers: int = 1
    prompt_tokens: int = 10
    prune_ratio: float = 0.5  # gamma: keep the hardest ceil(gamma * n) samples (EL2N)
    prune_stratified: bool = False  # share the kept count among classes by their counts
    local_loss_steps: int = 1  # head->tail shortcut steps per round, no traffic


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def read_options(cls: type, options: dict[str, Any], algorithm: str) -> Any:
    """Build `cls` from cfg.options, refusing unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean 'options.{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown option 'options.{key}' for algorithm '{algorithm}'{hint}; "
                              f"known: {', '.join(fields)}")
        kind = _TYPES[str(fields[key].type)]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"options.{key} expects {kind.__name__}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)
