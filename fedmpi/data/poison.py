"""Backdoor data poisoning (FedPrompt's threat model) and its attack success rate.

A fixed share of clients (`attack.malicious_fraction`) is malicious; each
poisons exactly round(`poison_rate` x its sample count) of its samples by
inserting the trigger word at a word position and relabelling them to
`target_label`. Which clients and which samples depend on the seed only, so
every rank agrees. The ASR is measured on the test samples whose true label
is not the target, triggered: the share the global model sends to the target.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fedmpi.data.splits import TextSplit


def _share(n: int, fraction: float) -> int:
    """round-half-up of n x fraction (0.1 x 10 clients = 1, 0.5 x 5 samples = 3)."""
    return int(np.floor(n * fraction + 0.5))


def malicious_clients(num_clients: int, fraction: float, seed: int) -> list[int]:
    rng = np.random.default_rng([seed, 0xBAD])
    return sorted(int(c) for c in rng.permutation(num_clients)[: _share(num_clients, fraction)])


def insert_trigger(text: str, trigger: str, position: int) -> str:
    """Insert `trigger` before word `position` (-1 = append; past the end = append)."""
    words = text.split()
    at = len(words) if position < 0 or position > len(words) else position
    return " ".join(words[:at] + [trigger] + words[at:])


def poisoned_indices(n: int, rate: float, seed: int, client: int) -> np.ndarray:
    rng = np.random.default_rng([seed, client, 0x7A1])
    return np.sort(rng.permutation(n)[: _share(n, rate)])


def poison_split(split: TextSplit, attack: Any, idx: np.ndarray) -> TextSplit:
    texts = list(split.texts)
    labels = split.labels.copy()
    for i in idx:
        texts[i] = insert_trigger(texts[i], attack.trigger, attack.trigger_position)
        labels[i] = attack.target_label
    return TextSplit(texts, labels, split.texts_b)


def triggered_test(test: TextSplit, attack: Any) -> TextSplit:
    """Test samples whose true label is not the target, with the trigger inserted
    (labels kept: the ASR asks how many of them the model sends to the target)."""
    keep = np.flatnonzero(test.labels != attack.target_label)
    sub = test.subset(keep)
    return TextSplit([insert_trigger(t, attack.trigger, attack.trigger_position) for t in sub.texts],
                     sub.labels, sub.texts_b)


class Backdoor:
    """The data transform of malicious clients (FederatedData.transform)."""

    def __init__(self, attack: Any, num_clients: int, seed: int) -> None:
        self.attack = attack
        self.seed = seed
        self.malicious = set(malicious_clients(num_clients, attack.malicious_fraction, seed))

    def __call__(self, client: int, split: TextSplit) -> TextSplit:
        if client not in self.malicious:
            return split
        return poison_split(split, self.attack, poisoned_indices(len(split), self.attack.poison_rate,
                                                                 self.seed, client))
