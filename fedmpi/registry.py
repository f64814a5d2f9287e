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
        """The entry `name`, or any importable "module:attribute" (a user's or a test's plug-in)."""
        if name not in self.entries and ":" in name:
            module, attr = name.split(":", 1)
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"{self.key} '{name}': cannot import it ({exc})") from None
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
    "fp16": "fedmpi.net.codecs.half:FP16",
    "bf16": "fedmpi.net.codecs.half:BF16",
    "int8": "fedmpi.net.codecs.integer:Int8",
    "int4": "fedmpi.net.codecs.integer:Int4",
    "nf4": "fedmpi.net.codecs.nf4:NF4",
    "topk": "fedmpi.net.codecs.sparse:TopK",
    "randk": "fedmpi.net.codecs.sparse:RandK",
})

# Strategies (fedmpi/strategies): the server optimiser applied to the aggregate,
# hooks around each client's local training, how arrived updates are combined,
# and differential privacy of the aggregate. Each is a `strategy.<part>` section.
SERVER_STRATEGIES = Registry("strategy.server.name", {
    "fedavg": "fedmpi.strategies.base:ServerStrategy",
    "fedavgm": "fedmpi.strategies.fedavgm:FedAvgM",
    "fedadagrad": "fedmpi.strategies.adaptive:FedAdagrad",
    "fedadam": "fedmpi.strategies.adaptive:FedAdam",
    "fedyogi": "fedmpi.strategies.adaptive:FedYogi",
})

CLIENT_STRATEGIES = Registry("strategy.client.name", {
    "none": "fedmpi.strategies.client:ClientStrategy",
    "fedprox": "fedmpi.strategies.fedprox:FedProx",
    "scaffold": "fedmpi.strategies.scaffold:Scaffold",
})

AGGREGATORS = Registry("strategy.aggregator.name", {
    "mean": "fedmpi.strategies.robust:RobustAggregator",
    "median": "fedmpi.strategies.median:Median",
    "trimmed_mean": "fedmpi.strategies.trimmed_mean:TrimmedMean",
    "krum": "fedmpi.strategies.krum:Krum",
    "multi_krum": "fedmpi.strategies.krum:MultiKrum",
    "norm_clip": "fedmpi.strategies.norm_clip:NormClip",
})

PRIVACY = Registry("strategy.privacy.name", {
    "none": "fedmpi.strategies.dp:NoPrivacy",
    "dp": "fedmpi.strategies.dp:DPFedAvg",
})

# "natural": the dataset's own clients (chitchat participants); only where a task has them.
PARTITIONS = ("iid", "dirichlet", "shards", "quantity", "natural")
