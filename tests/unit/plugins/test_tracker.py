"""A tracker asked for but not installed is one clear error before any rank starts."""
from __future__ import annotations

import importlib.util

import pytest

from fedmpi.errors import ConfigError
from fedmpi.plugins import tracker


def test_missing_package_is_a_config_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="output.tracker: tensorboard needs tensorboard: pip install"):
        tracker.check("tensorboard")
    with pytest.raises(ConfigError, match="output.tracker: mlflow needs mlflow, sqlalchemy, alembic"):
        tracker.check("mlflow")
    tracker.check(None)


def test_rows_are_flattened_to_numbers():
    row = {"round": 2, "accuracy": None, "loss": 0.5, "bytes_by_kind": {"update": 10}, "ok": True,
           "nan": float("nan")}
    assert tracker.numeric(row) == {"round": 2.0, "loss": 0.5, "bytes_by_kind/update": 10.0}
