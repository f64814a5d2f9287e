"""Run-folder JSON never holds NaN or Infinity (not JSON: jq, JavaScript and strict readers reject it)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedmpi.jsonsafe import dumps, finite


def test_non_finite_numbers_become_null_with_a_note():
    row = {"round": 3, "loss": math.nan, "x": math.inf, "y": -math.inf, "ok": 0.5,
           "nested": {"z": np.float64("nan")}, "list": [1.0, math.nan]}
    out = json.loads(dumps(row))
    assert out == {"round": 3, "loss": None, "x": None, "y": None, "ok": 0.5, "nested": {"z": None, "z_note": "was NaN"},
                   "list": [1.0, None], "loss_note": "was NaN", "x_note": "was +infinity", "y_note": "was -infinity"}


def test_a_producer_note_is_kept():
    assert finite({"loss": math.nan, "loss_note": "no client arrived"}) == {"loss": None,
                                                                             "loss_note": "no client arrived"}


def test_plain_json_refuses_what_dumps_cleans():
    with pytest.raises(ValueError):
        json.dumps({"a": math.nan}, allow_nan=False)
    assert dumps({"a": 1, "b": "x"}) == json.dumps({"a": 1, "b": "x"})
