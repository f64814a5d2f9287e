"""A validation split carved from the training data: disjoint, seeded, scored only if asked."""
from __future__ import annotations

import pytest

from conftest import TINY
from fedmpi.config import load_config
from fedmpi.data.sources import load_dataset
from fedmpi.errors import ConfigError


def test_validation_is_held_out_of_training_and_replaces_test_only_when_asked():
    cfg = load_config(TINY, ["data.validation_fraction=0.1", "data.evaluate=validation"])
    full = load_dataset(load_config(TINY).data, 0)
    d = load_dataset(cfg.data, 0)
    assert (len(d.train), len(d.test)) == (360, 40)
    assert sorted(d.train.texts + d.test.texts) == sorted(full.train.texts)  # a split of the training data
    assert d.test.texts == load_dataset(cfg.data, 0).test.texts  # the same split every time (seeded)
    kept = load_dataset(load_config(TINY, ["data.validation_fraction=0.1"]).data, 0)
    assert kept.test.texts == full.test.texts and len(kept.train) == 360
    with pytest.raises(ConfigError, match="data.evaluate: validation needs data.validation_fraction > 0"):
        load_config(TINY, ["data.evaluate=validation"])
