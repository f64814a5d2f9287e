"""FLOP meter: counts local forward/backward work with torch.utils.flop_counter.

torch counts matrix products only; the formulas of metering/formulas.py add
every other op a transformer dispatches (LayerNorm, GELU, softmax, dropout,
residual adds, the embeddings' backward), and `optimizer_step_flops` the
optimizer step, which runs outside the counted step.

Counting through a dispatch mode costs time, so each distinct (tag, input
shapes) is counted once, on the real step, and cached. The counted step runs
the very same kernels as an uncounted one, so metering never changes results.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Hashable, Iterator

import torch
from torch.utils import flop_counter as fc

from fedmpi.metering.formulas import FORMULAS


def shape_key(*tensors: object) -> tuple:
    """A hashable key from the shapes of tensors (nested dicts/lists allowed)."""
    out: list = []
    for t in tensors:
        if isinstance(t, torch.Tensor):
            out.append(tuple(t.shape))
        elif isinstance(t, dict):
            out.append(tuple((k, shape_key(v)) for k, v in sorted(t.items())))
        elif isinstance(t, (list, tuple)):
            out.append(shape_key(*t))
        else:
            out.append(t)
    return tuple(out)


class FlopMeter:
    """Counts FLOPs of callables, cached by a key describing their shapes."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._cache: dict[Hashable, int] = {}
        self.counted_calls = 0

    def run(self, key: Hashable, fn: Callable[[], object]) -> tuple[object, int]:
        """Run fn; return (its result, its FLOPs). Counts only on a cache miss."""
        if not self.enabled:
            return fn(), 0
        if key in self._cache:
            return fn(), self._cache[key]
        counter = fc.FlopCounterMode(display=False, custom_mapping=FORMULAS)
        with counter:
            result = fn()
        flops = int(counter.get_total_flops())
        self._cache[key] = flops
        self.counted_calls += 1
        return result, flops

    @contextmanager
    def disabled(self) -> Iterator[None]:
        prev, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = prev


def svd_flops(m: int, n: int, rank: int | None = None, niter: int | None = None) -> int:
    """FLOPs of an SVD, which torch's flop counter does not see (linalg ops).

    Exact thin SVD (rank None): Golub & Van Loan's R-SVD count for U1, S, V,
    6·q·p² + 20·p³ with p = min(m, n), q = max(m, n). Randomised
    (torch.svd_lowrank, rank k, niter power iterations, Halko et al.): the
    2·niter + 2 products of A with an n×k or m×k block, a QR of each result,
    then the SVD of the small k×n projection."""
    p, q = min(m, n), max(m, n)
    if niter is None:
        return 6 * q * p * p + 20 * p ** 3
    k = min(rank or p, p)
    products = (2 * niter + 2) * 2 * m * n * k
    qrs = (2 * niter + 1) * 4 * q * k * k
    return products + qrs + 6 * n * k * k + 20 * k ** 3 + 2 * m * k * k
