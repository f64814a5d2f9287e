"""Sequence classification (text or images): the first task.

A Hugging Face `...ForSequenceClassification` (or ViT/CLIP image classifier)
with a fresh head of the dataset's label count; cross-entropy loss; accuracy
and mean loss on the test split.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from fedmpi.data import cache
from fedmpi.data.federated import Encoded, to_device
from fedmpi.data.partition import partition
from fedmpi.data.sources import load_dataset
from fedmpi.data.splits import Dataset, TextSplit
from fedmpi.errors import ConfigError
from fedmpi.models.backbone import build_model, load_tokenizer, resolve
from fedmpi.tasks.base import Batch, Task


class Classification(Task):
    name = "classification"
    score = "accuracy"

    @classmethod
    def check(cls, cfg: Any) -> None:
        from fedmpi.models.llm import LLAMA_NAMES

        if cfg.data.partition == "natural":
            raise ConfigError("data.partition natural needs data with natural clients (task causal_lm with "
                              "data.name chitchat); classification data has none: use iid, dirichlet, shards or "
                              "quantity")
        if cfg.model.name in LLAMA_NAMES or cfg.model.name.endswith(".gguf"):
            raise ConfigError(f"model '{cfg.model.name}' is a causal LM; fine-tune it with task: causal_lm "
                              "(classification as instruction on a labelled folder)")

    def load_data(self) -> Dataset:
        return load_dataset(self.cfg.data, self.cfg.seed)

    def partition(self, dataset: Dataset) -> list[np.ndarray]:
        d = self.cfg.data
        return partition(dataset.train.labels, self.partition_clients(), d.partition, alpha=d.alpha,
                         shards_per_client=d.shards_per_client, seed=self.cfg.seed)

    def tokenizer(self) -> Any:
        return load_tokenizer(self.cfg.model)

    def encoder(self, tokenizer: Any) -> Callable[[Any], Any]:
        max_length = self.cfg.model.max_length
        if hasattr(tokenizer, "encode_split"):  # image models: a pixel encoder stands in for the tokenizer
            return lambda split: tokenizer.encode_split(split, max_length)
        return lambda split: Encoded(split, tokenizer, max_length)

    def _cache_names(self, dataset: Dataset) -> tuple[str, str] | None:
        """The cache files of the train and test encodings (None: text with a local tokenizer only)."""
        if not (isinstance(dataset.train, TextSplit) and isinstance(dataset.test, TextSplit)):
            return None
        if cache.cache_dir() is None:
            return None
        tok = cache.tokenizer_fingerprint(resolve(self.cfg.model.name))
        if tok is None:
            return None
        length = self.cfg.model.max_length
        return cache.key(dataset.train, tok, length), cache.key(dataset.test, tok, length)

    def cached_encodings(self, dataset: Dataset) -> tuple[Any, Any]:
        names = self._cache_names(dataset)
        if names is None:
            return None, None
        return cache.load(names[0]), cache.load(names[1])

    def fill_cache(self, dataset: Dataset) -> None:
        names = self._cache_names(dataset)
        if names is None:
            return
        missing = [(split, name) for split, name in zip((dataset.train, dataset.test), names)
                   if not cache.path_of(name).is_file()]
        if missing:
            if importlib.util.find_spec("datasets") is None:  # the cache's writer; without it ranks
                return  # encode each client on first use, as without a cache
            tokenizer = self.tokenizer()
            for split, name in missing:
                cache.store(name, split, tokenizer, self.cfg.model.max_length)

    def build_model(self, dataset: Dataset) -> nn.Module:
        return build_model(self.cfg.model, dataset.num_labels, self.cfg.seed)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        """Accuracy and mean loss of the classifier over batches."""
        model.eval()
        correct = total = 0
        loss_sum = 0.0
        for batch in batches:
            batch = to_device(batch, device)
            out = model(**batch)
            n = int(batch["labels"].shape[0])
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            loss_sum += float(out.loss) * n
            total += n
        return {"accuracy": correct / max(1, total), "test_loss": loss_sum / max(1, total)}

    @torch.no_grad()
    def predict(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> torch.Tensor:
        model.eval()
        return torch.cat([model(**to_device(b, device)).logits.argmax(-1).cpu() for b in batches])
