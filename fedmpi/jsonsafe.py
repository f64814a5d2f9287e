"""JSON with no NaN or infinity in it: what every run-folder file is written with.

Python's json writes `NaN` and `Infinity`, which are not JSON: jq, JavaScript,
pandas' strict readers and most plotting tools reject the whole file. A
non-finite number is written as null, and the row says why in a sibling
`<key>_note` field (unless the producer already put a better note there).
"""
from __future__ import annotations

import json
import math
from typing import Any


def _note(value: float) -> str:
    return "was NaN" if math.isnan(value) else f"was {'+' if value > 0 else '-'}infinity"


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None, and a `<key>_note` beside it."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        notes: dict[str, str] = {}
        for k, v in obj.items():
            if isinstance(v, float) and not math.isfinite(v):
                notes[f"{k}_note"] = _note(v)
            out[k] = finite(v)
        for k, note in notes.items():
            out.setdefault(k, note)
        return out
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps that never writes NaN/Infinity (allow_nan=False after `finite`)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
