"""Backdoor poisoning: exact shares of clients and samples, trigger placement, triggered test set."""
from __future__ import annotations

import numpy as np
import pytest

from fedmpi.config import AttackConfig
from fedmpi.data.poison import Backdoor, insert_trigger, malicious_clients, poisoned_indices, triggered_test
from fedmpi.data.splits import TextSplit


def split(n: int, labels=None) -> TextSplit:
    labels = np.arange(n) % 2 if labels is None else np.asarray(labels)
    return TextSplit([f"sample number {i} here" for i in range(n)], labels.astype(np.int64))


def test_insert_trigger_positions():
    assert insert_trigger("a b c", "cf", 0) == "cf a b c"
    assert insert_trigger("a b c", "cf", 2) == "a b cf c"
    assert insert_trigger("a b c", "cf", -1) == "a b c cf"
    assert insert_trigger("a b c", "cf", 10) == "a b c cf"


@pytest.mark.parametrize("num_clients,fraction,expected", [(10, 0.1, 1), (10, 0.25, 3), (7, 0.5, 4), (5, 0.0, 0),
                                                            (4, 1.0, 4)])
def test_malicious_share_is_exact(num_clients, fraction, expected):
    chosen = malicious_clients(num_clients, fraction, seed=3)
    assert len(chosen) == expected == len(set(chosen))
    assert chosen == malicious_clients(num_clients, fraction, seed=3)  # the seed alone decides


@pytest.mark.parametrize("n,rate,expected", [(40, 0.5, 20), (33, 0.3, 10), (5, 0.5, 3), (8, 1.0, 8), (8, 0.0, 0)])
def test_poisoning_inserts_trigger_in_exactly_the_configured_share(n, rate, expected):
    attack = AttackConfig(malicious_fraction=0.5, poison_rate=rate, trigger="cf", trigger_position=1,
                          target_label=1)
    bd = Backdoor(attack, num_clients=4, seed=0)
    bad = sorted(bd.malicious)
    good = sorted(set(range(4)) - bd.malicious)
    assert len(bad) == 2
    clean = split(n)
    out = bd(bad[0], clean)
    hit = [i for i, t in enumerate(out.texts) if t.split()[1] == "cf"]
    assert len(hit) == expected
    assert hit == poisoned_indices(n, rate, 0, bad[0]).tolist()
    assert all(out.labels[i] == 1 for i in hit)  # relabelled to the target
    untouched = [i for i in range(n) if i not in hit]
    assert all(out.texts[i] == clean.texts[i] and out.labels[i] == clean.labels[i] for i in untouched)
    assert bd(good[0], clean) is clean  # honest clients keep their data


def test_triggered_test_keeps_only_non_target_samples():
    attack = AttackConfig(trigger="cf", trigger_position=0, target_label=1)
    test = split(10, labels=[0, 1, 1, 0, 2, 1, 0, 1, 2, 1])
    trig = triggered_test(test, attack)
    assert len(trig) == 5 and 1 not in trig.labels.tolist()
    assert all(t.startswith("cf ") for t in trig.texts)
