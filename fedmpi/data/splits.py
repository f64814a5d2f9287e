"""What a loaded dataset is: train and test splits of texts (or images) and their labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

TEST_SPLITS = ("test", "dev", "validation", "valid")


@dataclass
class TextSplit:
    texts: list[str]
    labels: np.ndarray  # int64
    texts_b: list[str] | None = None  # second sentence of pair tasks

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray) -> "TextSplit":
        return TextSplit([self.texts[i] for i in idx], self.labels[idx],
                         None if self.texts_b is None else [self.texts_b[i] for i in idx])


@dataclass
class Dataset:
    """A task's data: `train` is partitioned over clients, `test` scores the global model."""
    name: str
    train: Any  # TextSplit | ImageSplit | a task's own split type
    test: Any
    label_names: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)
