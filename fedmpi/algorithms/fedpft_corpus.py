"""FedPFT's public corpus: general text, never the task's, packed into full windows.

The paper distils on a general corpus (BookCorpus + Wikipedia); its official
code tokenises every document, concatenates the token ids and cuts them into
fixed windows, so no position is padding. Offline, the general corpus comes
from ../shared/data: 20 Newsgroups by default (long messages on twenty topics
from computing, science, religion, politics and sport: the closest of the
shared sets to general English, and unlike AG News not a short single-domain
text that is itself a common downstream task). E-mail headers are dropped
(they are addresses and message ids, not language), and one document gives at
most `MAX_WINDOWS_PER_DOC` windows, so a few long FAQs cannot make up the corpus.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from fedmpi.config import DataConfig
from fedmpi.data.sources import load_dataset
from fedmpi.errors import ConfigError

MAX_WINDOWS_PER_DOC = 4
_HEADER = re.compile(r"^[A-Za-z][A-Za-z0-9-]*: ")


def strip_headers(text: str) -> str:
    """A message's body: without its leading `Key: value` lines (and their indented
    continuations), up to the first blank or ordinary line."""
    lines = text.split("\n")
    n = 0
    while n < len(lines) and (_HEADER.match(lines[n]) or (n and lines[n][:1] in (" ", "\t") and lines[n].strip())):
        n += 1
    return "\n".join(lines[n:]).lstrip("\n") if n else text


def public_texts(public_data: str, tokens: int, data: DataConfig, seed: int) -> list[str]:
    """Documents of the public corpus in a seeded order; never the task's own data.
    (`tokens`: how many the caller will pack, for the generated "embedded" text.)"""
    if public_data == "embedded":
        from fedmpi.data.embedded import _sentences

        texts, _ = _sentences(max(1, tokens // 4), np.random.default_rng([seed, 0x9B1C]))
        return list(texts)
    folder = Path(public_data)
    dcfg = (DataConfig(name=str(folder)) if folder.is_dir()
            else DataConfig(name=public_data, path=data.path or "../shared/data"))
    same = (dcfg.name == data.name and dcfg.path == data.path) or (
        folder.is_dir() and data.path and folder.resolve() == (Path(data.path) / data.name).resolve())
    if same:
        raise ConfigError(f"options.public_data '{public_data}' is the task's own data; distillation "
                          "needs other, general text (e.g. 20newsgroups, ag_news, or 'embedded')")
    train = load_dataset(dcfg, seed).train
    order = np.random.default_rng([seed, 0x9B1D]).permutation(len(train))
    return [" ".join(strip_headers(train.texts[i]).split()) for i in order]


class PackedWindows:
    """Token windows of exactly `length` real tokens (attention mask all ones), in the batch
    format of `fedmpi.data.federated.Encoded`."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids  # (windows, length), int64

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def batch(self, idx) -> dict[str, torch.Tensor]:
        ids = self.ids[torch.as_tensor(np.asarray(idx, dtype=np.int64))]
        return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids),
                "labels": torch.zeros(len(ids), dtype=torch.long)}


def pack(texts: list[str], tokenizer, length: int, windows: int) -> PackedWindows:
    """Tokenise documents in order (special tokens included, each capped at
    MAX_WINDOWS_PER_DOC windows), concatenate, and cut `windows` windows of `length` tokens."""
    need, ids, chunk = windows * length, [], 64
    for start in range(0, len(texts), chunk):
        enc = tokenizer(texts[start:start + chunk], truncation=True, max_length=MAX_WINDOWS_PER_DOC * length,
                        padding=False)["input_ids"]
        for doc in enc:
            ids.extend(doc)
        if len(ids) >= need:
            break
    have = len(ids) // length
    if have == 0:
        raise ConfigError(f"the public corpus holds fewer than {length} tokens")
    n = min(windows, have)
    return PackedWindows(torch.as_tensor(ids[: n * length], dtype=torch.long).view(n, length))
