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
    (few distinct shapes, so FLOP counts cache well).

    The ids live in flat arrays with row offsets (a CSR layout, the layout of an
    Arrow list column), so a whole split costs two small arrays rather than a Python
    list per sample, a client is a view of its rows (`subset`), and a batch is built
    with a few vectorised gathers."""

    def __init__(self, split: TextSplit | None, tokenizer=None, max_length: int = 0) -> None:
        if split is None:  # filled by `from_arrays`
            return
        enc = tokenizer(split.texts, split.texts_b, truncation=True, max_length=max_length,
                        padding=False, return_token_type_ids=True)
        lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(split))
        flat = lambda rows: np.fromiter((t for row in rows for t in row), dtype=np.int64,  # noqa: E731
                                        count=int(lengths.sum()))
        self._set(flat(enc["input_ids"]), flat(enc["token_type_ids"]), np.concatenate([[0], np.cumsum(lengths)]),
                  np.asarray(split.labels), tokenizer.pad_token_id or 0)

    @classmethod
    def from_arrays(cls, ids: np.ndarray, types: np.ndarray, offsets: np.ndarray, labels: np.ndarray,
                    pad_id: int) -> "Encoded":
        out = cls(None)
        out._set(ids, types, offsets, labels, pad_id)
        return out

    def _set(self, ids: np.ndarray, types: np.ndarray, offsets: np.ndarray, labels: np.ndarray,
             pad_id: int) -> None:
        self.ids, self.types = np.asarray(ids), np.asarray(types)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.labels = torch.as_tensor(np.array(labels, dtype=np.int64))  # a copy: cached arrays are read-only
        self.pad_id = int(pad_id)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self, idx: np.ndarray) -> np.ndarray:
        return self.offsets[idx + 1] - self.offsets[idx]

    def batch(self, idx: np.ndarray | list[int]) -> Batch:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        n = self.lengths(idx)
        width = -(-int(n.max()) // 8) * 8
        cols = np.arange(width)
        mask = cols[None, :] < n[:, None]
        pos = np.where(mask, self.offsets[idx][:, None] + cols[None, :], 0)
        ids = np.where(mask, self.ids[pos], self.pad_id)
        types = np.where(mask, self.types[pos], 0)
        return {"input_ids": torch.from_numpy(ids.astype(np.int64)),
                "token_type_ids": torch.from_numpy(types.astype(np.int64)),
                "attention_mask": torch.from_numpy(mask.astype(np.int64)), "labels": self.labels[idx]}

    def subset(self, rows: np.ndarray) -> "EncodedRows":
        return EncodedRows(self, np.asarray(rows, dtype=np.int64))


class EncodedRows:
    """Some rows of an `Encoded` split (a client's shard), batched exactly as if they
    had been tokenised on their own: tokenising is per sample, padding per batch."""

    def __init__(self, base: Encoded, rows: np.ndarray) -> None:
        self.base, self.rows = base, rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> torch.Tensor:
        return self.base.labels[self.rows]

    def batch(self, idx: np.ndarray | list[int]) -> Batch:
        return self.base.batch(self.rows[np.asarray(idx, dtype=np.int64)])


class FederatedData:
    """Clients' shards of a dataset: views of the whole encoded training split when
    it is given (`train`, e.g. from data/cache.py), else encoded on first use by the
    task's `encode`. A client transform (poisoning) always encodes the client's own
    transformed split."""

    def __init__(self, dataset: Dataset, parts: list[np.ndarray], encode: Encode, seed: int,
                 transform: ClientTransform | None = None, train: Encoded | None = None,
                 test: Encoded | None = None) -> None:
        self.dataset = dataset
        self.parts = parts
        self.encode = encode
        self.seed = seed
        self.transform = transform
        self.train = train
        self._clients: dict[int, Encoded] = {}
        self._test: Encoded | None = test

    @property
    def num_clients(self) -> int:
        return len(self.parts)

    def client_size(self, client: int) -> int:
        return len(self.parts[client])

    def client_split(self, client: int) -> TextSplit:
        split = self.dataset.train.subset(self.parts[client])
        return self.transform(client, split) if self.transform else split

    def client(self, client: int) -> Encoded | EncodedRows:
        if self.train is not None and self.transform is None:
            return self.train.subset(self.parts[client])
        if client not in self._clients:
            split = self.dataset.train.subset(self.parts[client])
            changed = self.transform(client, split) if self.transform else split
            if self.train is not None and changed is split:  # the transform left this client alone
                return self.train.subset(self.parts[client])
            self._clients[client] = self.encode(changed)
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
