"""Partitions: every sample once, deterministic, and skew that follows alpha."""
from __future__ import annotations

import numpy as np
import pytest

from fedmpi.config import ConfigError
from fedmpi.data.partition import partition

LABELS = np.repeat(np.arange(4), 250)  # 1000 samples, 4 balanced classes


def _label_skew(parts, labels) -> float:
    """Mean total-variation distance of client label mix from the global mix."""
    glob = np.bincount(labels, minlength=4) / len(labels)
    return float(np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=4) / len(p) - glob).sum() for p in parts]))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "quantity"])
def test_every_sample_exactly_once_and_deterministic(scheme):
    parts = partition(LABELS, 10, scheme, alpha=0.5, seed=1)
    allidx = np.concatenate(parts)
    assert len(parts) == 10 and all(len(p) > 0 for p in parts)
    assert sorted(allidx.tolist()) == list(range(len(LABELS)))
    again = partition(LABELS, 10, scheme, alpha=0.5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_iid_sizes_are_balanced():
    sizes = [len(p) for p in partition(LABELS, 7, "iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_label_skew_grows_as_alpha_falls():
    skews = [np.mean([_label_skew(partition(LABELS, 10, "dirichlet", alpha=a, seed=s), LABELS) for s in range(5)])
             for a in (100.0, 1.0, 0.1)]
    assert skews[0] < 0.1 < skews[1] < skews[2]
    assert _label_skew(partition(LABELS, 10, "iid", seed=0), LABELS) < 0.1


def test_shards_give_each_client_few_labels():
    parts = partition(LABELS, 10, "shards", shards_per_client=2, seed=0)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)


def test_quantity_skew_varies_sizes_not_labels():
    parts = partition(LABELS, 10, "quantity", alpha=0.5, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) > 3 * min(sizes)


def test_more_clients_than_samples_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"more clients \(20\) than training samples \(10\)"):
        partition(np.zeros(10, dtype=int), 20, "iid")
