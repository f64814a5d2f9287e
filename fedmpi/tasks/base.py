"""The task seam: a task owns its data layout, its model head, how a batch is
built, its loss and its evaluation metrics. The engine and every algorithm
go through these methods only, so a new task (causal-LM instruction tuning,
regression) plugs in without touching them.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch
from torch import nn

from fedmpi.data.splits import Dataset
from fedmpi.options import NoOptions

Batch = dict[str, torch.Tensor]


class Task:
    name: ClassVar[str] = "task"
    Options: ClassVar[type] = NoOptions
    score: ClassVar[str] = "accuracy"  # the metric summaries report as final_<score> / best_<score>
    higher_is_better: ClassVar[bool] = True

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Refuse a config this task cannot serve, from the config alone."""

    # -- data -------------------------------------------------------------
    def load_data(self) -> Dataset:
        raise NotImplementedError

    def partition(self, dataset: Dataset) -> list[np.ndarray]:
        """Each client's training sample indices (of `partition_clients()` clients)."""
        raise NotImplementedError

    def partition_clients(self) -> int:
        """How many clients the training set is cut for: the federation's, or, for the
        local-only baseline, the federation's whose part one client trains on alone."""
        d = self.cfg.data
        return self.cfg.federation.num_clients if d.only_client is None else d.partition_clients

    def tokenizer(self) -> Any:
        raise NotImplementedError

    def encoder(self, tokenizer: Any) -> Callable[[Any], Any]:
        """split -> an encoding with `len()` and `batch(indices)`."""
        raise NotImplementedError

    def cached_encodings(self, dataset: Dataset) -> tuple[Any, Any]:
        """(train, test) encodings from a cache shared across runs (the train one with
        `subset(rows)`), or None for each: clients are then encoded on first use."""
        return None, None

    def fill_cache(self, dataset: Dataset) -> None:
        """The launcher, before any rank starts: put what `cached_encodings` reads in the cache."""

    # -- model --------------------------------------------------------------
    def build_model(self, dataset: Dataset) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(**batch).loss

    def samples(self, batch: Batch) -> int:
        """How many samples a batch holds (the weight of its loss)."""
        return int(batch["labels"].shape[0])

    # -- scoring ------------------------------------------------------------
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        raise NotImplementedError
