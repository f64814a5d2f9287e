"""The one list of every pluggable name: algorithms, methods, tasks, codecs, strategies.

Entries are ``"module:attribute"`` strings, imported only when chosen, so this
table sits at the bottom of the import graph and config validation, the
launcher's pre-flight, `--help` texts and error messages all read the same
names. Adding a plug-in is one line here plus its own file.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from fedmpi.errors import ConfigError
from fedmpi.options import _closest


@dataclass(frozen=True)
class Registry:
    key: str  # the config key that names an entry, for messages
    entries: dict[str, str]

    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def get(self, name: str) -> Any:
        if name not in self.entries:
            raise ConfigError(f"unknown {self.key} '{name}'{_closest(name, self.entries)}; "
                              f"choose one of: {', '.join(self.entries)}")
        module, attr = self.entries[name].split(":")
        return getattr(importlib.import_module(module), attr)


ALGORITHMS = Registry("algorithm", {
    "fedavg": "fedmpi.algorithms.fedavg:FedAvg",
    "splitfed": "fedmpi.algorithms.splitfed:SplitFed",
    "sfprompt": "fedmpi.algorithms.sfprompt:SFPrompt",
    "fedpft": "fedmpi.algorithms.fedpft:FedPFT",
})

# A method decides which parameters train (and so travel); see models/methods.py.
METHODS = Registry("method.name", {
    "full": "fedmpi.models.methods:Full",
    "lora": "fedmpi.models.peft_methods:LoRA",
    "federa": "fedmpi.models.peft_methods:FeDeRA",
    "prompt": "fedmpi.models.peft_methods:PromptTuning",
    "adapter": "fedmpi.models.peft_methods:Adapter",
    "bitfit": "fedmpi.models.peft_methods:BitFit",
    "head": "fedmpi.models.peft_methods:Head",
})

# What is learned and how it is scored (model head, batches, loss, metrics).
TASKS = Registry("task", {
    "classification": "fedmpi.tasks.classification:Classification",
    "causal_lm": "fedmpi.tasks.causal_lm:CausalLM",
})

# How a message is encoded on the wire; the ledger charges the encoded bytes.
CODECS = Registry("transport codec", {
    "fp32": "fedmpi.net.codec:Identity",
})

# "natural": the dataset's own clients (chitchat participants); only where a task has them.
PARTITIONS = ("iid", "dirichlet", "shards", "quantity", "natural")
