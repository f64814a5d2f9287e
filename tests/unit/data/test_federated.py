"""Encoded splits: the flat (CSR) layout batches exactly as per-sample padding did;
a client's view of the whole split equals its own encoding; the Arrow cache
round-trips and is keyed by every input that changes the ids."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmpi.data import cache
from fedmpi.data.federated import Encoded, FederatedData
from fedmpi.data.splits import Dataset, TextSplit


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from fedmpi.models.backbone import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def split(n: int = 40, pairs: bool = False, seed: int = 0) -> TextSplit:
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "film", "plot", "really", "not", "a", "the", "superb", "dull", "unbelievably"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(n)]
    b = [" ".join(rng.choice(words, size=int(rng.integers(1, 9)))) for _ in range(n)] if pairs else None
    return TextSplit(texts, rng.integers(0, 2, size=n), b)


def reference_batch(s: TextSplit, tokenizer, max_length: int, idx: list[int]) -> dict[str, torch.Tensor]:
    """The per-sample padding Encoded.batch did before the flat layout, written out."""
    enc = tokenizer(s.texts, s.texts_b, truncation=True, max_length=max_length, padding=False,
                    return_token_type_ids=True)
    width = -(-max(len(enc["input_ids"][i]) for i in idx) // 8) * 8
    ids = torch.full((len(idx), width), tokenizer.pad_token_id or 0, dtype=torch.long)
    types = torch.zeros((len(idx), width), dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(enc["input_ids"][i])
        ids[row, :n] = torch.as_tensor(enc["input_ids"][i])
        types[row, :n] = torch.as_tensor(enc["token_type_ids"][i])
        mask[row, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
            "labels": torch.as_tensor(s.labels, dtype=torch.long)[idx]}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("pairs", [False, True])
def test_flat_layout_batches_like_per_sample_padding(tokenizer, pairs):
    s = split(pairs=pairs)
    enc = Encoded(s, tokenizer, max_length=16)  # 16 truncates the longest texts
    assert int(enc.lengths(np.arange(len(s))).max()) == 16
    for idx in ([0], [3, 1, 4, 1, 5], list(range(40))):
        assert same(enc.batch(idx), reference_batch(s, tokenizer, 16, idx))


def test_a_clients_view_equals_its_own_encoding(tokenizer):
    s = split(60)
    whole = Encoded(s, tokenizer, 24)
    rows = np.array([2, 7, 11, 30, 31, 59])
    own = Encoded(s.subset(rows), tokenizer, 24)
    view = whole.subset(rows)
    assert len(view) == len(own) == 6
    assert torch.equal(view.labels, own.labels)
    for idx in ([0, 1], [5, 3, 0], [4]):
        assert same(view.batch(idx), own.batch(idx))


def test_federated_data_gives_the_same_batches_with_and_without_the_whole_split(tokenizer):
    s = split(80)
    ds = Dataset("t", s, split(10, seed=1), ["neg", "pos"])
    parts = [np.arange(0, 30), np.arange(30, 33), np.arange(33, 80)]
    encode = lambda sp: Encoded(sp, tokenizer, 20)  # noqa: E731
    lazy = FederatedData(ds, parts, encode, seed=3)
    viewed = FederatedData(ds, parts, encode, seed=3, train=encode(s))
    for client in range(3):
        for a, b in zip(lazy.client_batches(client, 2, steps=4, batch_size=8),
                        viewed.client_batches(client, 2, steps=4, batch_size=8)):
            assert same(a, b)


def test_cache_round_trip_and_keys(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMPI_CACHE", str(tmp_path))
    s = split(50, pairs=True)
    tok = cache.tokenizer_fingerprint(
        __import__("fedmpi.models.backbone", fromlist=["minilm_path"]).minilm_path())
    name = cache.key(s, tok, 16)
    assert cache.load(name) is None
    assert cache.store(name, s, tokenizer, 16)
    assert cache.path_of(name).is_file() and cache.path_of(name).parent == tmp_path / "encoded"
    got = cache.load(name)
    ref = Encoded(s, tokenizer, 16)
    assert len(got) == 50
    assert same(got.batch(list(range(50))), ref.batch(list(range(50))))
    # every input that changes the ids changes the key
    other = TextSplit(list(s.texts), s.labels.copy(), list(s.texts_b))
    assert cache.key(other, tok, 16) == name
    other.texts[7] += " x"
    assert cache.key(other, tok, 16) != name
    flipped = TextSplit(s.texts, 1 - s.labels, s.texts_b)
    assert cache.key(flipped, tok, 16) != name
    assert cache.key(s, tok, 17) != name
    assert cache.key(s, "another tokenizer", 16) != name
    assert cache.key(TextSplit(s.texts, s.labels), tok, 16) != name  # no second sentence
    monkeypatch.setenv("FEDMPI_CACHE", "off")
    assert cache.path_of(name) is None and cache.load(name) is None
