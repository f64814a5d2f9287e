"""FLOP meter: counts local forward/backward work with torch.utils.flop_counter.

torch counts matrix products only; the formulas of metering/formulas.py add
every other op a transformer dispatches (LayerNorm, GELU, softmax, dropout,
residual adds, the embeddings' backward), and `optimizer_step_flops` the
optimizer step, which runs outside the counted step.

Counting through a dispatch mode costs time, so each distinct (tag, input
shapes) is counted once, on the real step, and cached; token batches of a new
sequence length are predicted, once a quadratic in the length has been checked
exact on counted ones (LengthFit). The counted step runs
the very same kernels as an uncounted one, so metering never changes results.
"""
from __future__ import annotations

from contextlib import contextmanager
from fractions import Fraction
from typing import Callable, Hashable, Iterator

import torch
from torch.utils import flop_counter as fc

from fedmpi.metering.formulas import FORMULAS


def sequence_length(batch: object) -> tuple[Hashable, int] | None:
    """(the batch's shape key with its sequence length masked, L) for a dict batch of
    token tensors: L is input_ids' second dimension, masked in every tensor whose
    second dimension it is. None for other batches (images: one shape)."""
    if not isinstance(batch, dict):
        return None
    ids = batch.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        return None
    length = int(ids.shape[1])
    masked = tuple((k, tuple(-1 if (i == 1 and d == length) else d for i, d in enumerate(v.shape))
                    if isinstance(v, torch.Tensor) else shape_key(v)) for k, v in sorted(batch.items()))
    return masked, length


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


class LengthFit:
    """A step's FLOPs as a function of the sequence length L, the other shapes fixed.

    What torch and FORMULAS count of a transformer step is a quadratic in L with
    integer values: projections, MLPs, norms, the loss and the embeddings' backward
    grow with L, attention scores and softmax with L², a pooler or head not at all.
    The quadratic through the first three counted lengths is trusted only once it
    has predicted the next CHECKS counted lengths exactly (integers, no tolerance);
    a miss, or a non-integer prediction, turns the fit off for good and every new
    length is counted as before. With dynamic padding a run meets dozens of lengths;
    each counted one costs a dispatch-mode step, several times a plain one."""
    CHECKS = 2

    def __init__(self) -> None:
        self.points: list[tuple[int, int]] = []  # the three lengths the fit goes through
        self.checked = 0
        self.failed = False

    @property
    def trusted(self) -> bool:
        return not self.failed and self.checked >= self.CHECKS

    def predict(self, length: int) -> int | None:
        if len(self.points) < 3:
            return None
        total = Fraction(0)
        for i, (xi, yi) in enumerate(self.points):
            term = Fraction(yi)
            for j, (xj, _) in enumerate(self.points):
                if j != i:
                    term *= Fraction(length - xj, xi - xj)
            total += term
        return int(total) if total.denominator == 1 else None

    def learn(self, length: int, flops: int) -> None:
        """A counted length: a point of the fit, or a check of it."""
        if self.failed or any(x == length for x, _ in self.points):
            return
        if len(self.points) < 3:
            self.points.append((length, flops))
        elif self.predict(length) == flops:
            self.checked += 1
        else:
            self.failed = True


class FlopMeter:
    """Counts FLOPs of callables, cached by a key describing their shapes."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._cache: dict[Hashable, int] = {}
        self._fits: dict[Hashable, LengthFit] = {}
        self.counted_calls = 0
        self.predicted_calls = 0

    def run(self, key: Hashable, fn: Callable[[], object],
            length: tuple[Hashable, int] | None = None) -> tuple[object, int]:
        """Run fn; return (its result, its FLOPs). Counts only on a cache miss, and
        not even then once `length` = (the key without its sequence length, L) has a
        trusted LengthFit."""
        if not self.enabled:
            return fn(), 0
        if key in self._cache:
            return fn(), self._cache[key]
        fit = self._fits.setdefault(length[0], LengthFit()) if length is not None else None
        if fit is not None and fit.trusted:
            flops = fit.predict(length[1])
            if flops is not None:
                self._cache[key] = flops
                self.predicted_calls += 1
                return fn(), flops
        counter = fc.FlopCounterMode(display=False, custom_mapping=FORMULAS)
        with counter:
            result = fn()
        flops = int(counter.get_total_flops())
        self._cache[key] = flops
        self.counted_calls += 1
        if fit is not None:
            fit.learn(length[1], flops)
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
