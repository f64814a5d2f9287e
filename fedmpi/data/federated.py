"""Per-client views of a task: tokenised once, batched deterministically.

Batches depend only on (seed, round, client), never on which rank hosts the
client, so results do not depend on how clients are packed into ranks.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from fedmpi.data.splits import Dataset, TextSplit

Batch = dict[str, torch.Tensor]
ClientTransform = Callable[[int, TextSplit], TextSplit]
Encode = Callable[[object], "Encoded"]  # a split -> its batchable encoding (the task's)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Encoded:
    """A tokenised split: variable-length ids, padded per batch to a multiple of 8
    (few distinct shapes, so FLOP counts cache well)."""

    def __init__(self, split: TextSplit, tokenizer, max_length: int) -> None:
        enc = tokenizer(split.texts, split.texts_b, truncation=True, max_length=max_length,
                        padding=False, return_token_type_ids=True)
        self.input_ids: list[list[int]] = enc["input_ids"]
        self.token_type_ids: list[list[int]] = enc["token_type_ids"]
        self.labels = torch.as_tensor(split.labels, dtype=torch.long)
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, idx: np.ndarray | list[int]) -> Batch:
        idx = list(map(int, idx))
        longest = max(len(self.input_ids[i]) for i in idx)
        width = -(-longest // 8) * 8
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(self.input_ids[i])
            ids[row, :n] = torch.as_tensor(self.input_ids[i])
            types[row, :n] = torch.as_tensor(self.token_type_ids[i])
            mask[row, :n] = 1
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": self.labels[idx]}


class FederatedData:
    """Clients' shards of a dataset, encoded on first use by the task's `encode`."""

    def __init__(self, dataset: Dataset, parts: list[np.ndarray], encode: Encode, seed: int,
                 transform: ClientTransform | None = None) -> None:
        self.dataset = dataset
        self.parts = parts
        self.encode = encode
        self.seed = seed
        self.transform = transform
        self._clients: dict[int, Encoded] = {}
        self._test: Encoded | None = None

    @property
    def num_clients(self) -> int:
        return len(self.parts)

    def client_size(self, client: int) -> int:
        return len(self.parts[client])

    def client_split(self, client: int) -> TextSplit:
        split = self.dataset.train.subset(self.parts[client])
        return self.transform(client, split) if self.transform else split

    def client(self, client: int) -> Encoded:
        if client not in self._clients:
            self._clients[client] = self.encode(self.client_split(client))
        return self._clients[client]

    def client_batches(self, client: int, rnd: int, steps: int, batch_size: int) -> Iterator[Batch]:
        """`steps` batches of the client's data: epoch-wise shuffles drawn from
        an RNG seeded by (seed, round, client)."""
        data = self.client(client)
        n = len(data)
        rng = np.random.default_rng([self.seed, rnd, client, 0xBA7C])
        order = rng.permutation(n)
        pos = 0
        bs = min(batch_size, n)
        for _ in range(steps):
            if pos + bs > n:
                order, pos = rng.permutation(n), 0
            yield data.batch(order[pos:pos + bs])
            pos += bs

    def client_all(self, client: int, batch_size: int) -> Iterator[tuple[np.ndarray, Batch]]:
        """Every sample of a client once, in order (for scoring, e.g. EL2N)."""
        data = self.client(client)
        for start in range(0, len(data), batch_size):
            idx = np.arange(start, min(start + batch_size, len(data)))
            yield idx, data.batch(idx)

    def test(self) -> Encoded:
        if self._test is None:
            self._test = self.encode(self.dataset.test)
        return self._test

    def test_batches(self, batch_size: int, encoded: Encoded | None = None) -> Iterator[Batch]:
        data = encoded or self.test()
        for start in range(0, len(data), batch_size):
            yield data.batch(np.arange(start, min(start + batch_size, len(data))))
