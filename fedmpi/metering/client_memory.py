"""What one client needs in memory to train: weights, gradients, optimizer state, activations.

SFPrompt and FedPFT exist because a client cannot hold or train the whole
model, yet a rank's RSS says nothing about that (every rank builds the whole
model, and a rank hosts many clients). So each client's training step is
measured, once per (step kind, batch shape) like the FLOP meter:

- weights: the distinct parameter and buffer storages the step's ops read
  (a dispatch mode sees every tensor an op touches): a split client's head and
  tail, FedPFT's proxy, the whole model for FedAvg;
- gradients: the .grad tensors present after the step;
- optimizer: the tensors in the optimizer's state after the step (AdamW's two
  moments and step counters; SGD without momentum none);
- activations: what autograd saves for backward during the step (saved-tensor
  hooks, distinct storages, parameters excluded), as FedPFT's estimate does;
  the sum over the step is the peak for a forward followed by one backward.

A device profile may carry a cap (`compute.client_memory_mb`). The need is
only known once the algorithm has run a client's step, and every client of a
run trains the same model on the same batch size, so a need over the cap
means no client could take part: the run is refused (every rank, with one
message) at the end of the first round that measured it, rather than turned
silently into a run without clients.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Hashable, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fedmpi.errors import ConfigError


@dataclass
class ClientMemory:
    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    key: str = ""  # the step kind and batch shape measured

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


class _Touched(TorchDispatchMode):
    """Records which of `known` storages the ops read."""

    def __init__(self, known: dict[int, int]) -> None:
        super().__init__()
        self.known, self.seen = known, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs or {})):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                ptr = t.untyped_storage().data_ptr()
                if ptr in self.known:
                    self.seen.add(ptr)
        return func(*args, **(kwargs or {}))


class ClientMemoryMeter:
    """Measures client training steps, once per key; keeps the heaviest."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._done: set[Hashable] = set()
        self._longest: dict[Hashable, int] = {}  # family -> the longest sequence measured
        self.heaviest: ClientMemory | None = None
        self.checked = False  # the cap was enforced against the heaviest so far

    @contextmanager
    def measure(self, key: Hashable, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                label: Hashable | None = None, length: tuple[Hashable, int] | None = None) -> Iterator[None]:
        """Wrap one whole client step (forward, backward, optimizer step), once per `key`;
        `label` is what summaries show of it (a key may hold a process-local id). With
        `length` = (the key without its sequence length, L), a step no longer than one
        already measured of the same family is skipped: every part of a step's memory
        grows with L, and only the heaviest step is reported and enforced."""
        if not self.enabled or key in self._done:
            yield
            return
        self._done.add(key)
        if length is not None:
            family, n = length
            if n <= self._longest.get(family, -1):
                yield
                return
            self._longest[family] = n
        state = dict(_storage(t) for t in list(model.parameters()) + list(model.buffers()))
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr, nbytes = _storage(t)
            if ptr not in state:
                saved[ptr] = nbytes
            return t

        touched = _Touched(state)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), touched:
            yield
        grads = {_storage(p.grad) for p in model.parameters() if p.grad is not None}
        opt = {_storage(t) for st in (optimizer.state.values() if optimizer is not None else [])
               for t in st.values() if isinstance(t, torch.Tensor)}
        m = ClientMemory(weights=sum(state[p] for p in touched.seen), gradients=sum(n for _, n in grads),
                         optimizer=sum(n for _, n in opt), activations=sum(saved.values()),
                         key=str(key if label is None else label))
        if self.heaviest is None or m.total > self.heaviest.total:
            self.heaviest = m
            self.checked = False


def heaviest(needs: list[ClientMemory | None]) -> ClientMemory | None:
    found = [m for m in needs if m is not None]
    return max(found, key=lambda m: m.total) if found else None


def over_cap(need: ClientMemory | None, cap_mb: float | None) -> str | None:
    """The refusal message when `need` exceeds the cap, else None."""
    if need is None or cap_mb is None or need.total <= cap_mb * 2**20:
        return None
    mb = lambda n: f"{n / 2**20:.1f} MB"  # noqa: E731
    return (f"a client needs {mb(need.total)} to train (weights {mb(need.weights)}, gradients "
            f"{mb(need.gradients)}, optimizer {mb(need.optimizer)}, activations {mb(need.activations)}; "
            f"step {need.key}) but compute.client_memory_mb is {cap_mb:g}: no client of this device profile "
            f"can take part. Raise the cap, or lower train.batch_size / model.max_length, or choose a method "
            f"or algorithm that leaves the client less (prompt, lora, sfprompt, fedpft)")


def enforce_cap(link: Any, meter: ClientMemoryMeter, cap_mb: float | None) -> None:
    """Collective, after a round's training: refuse the run on every rank when any
    client's newly measured need exceeds the cap."""
    if cap_mb is None:
        return
    fresh = meter.heaviest if (meter.heaviest is not None and not meter.checked) else None
    meter.checked = True
    needs = link.gather(fresh)
    message = over_cap(heaviest(needs), cap_mb) if needs is not None else None
    message = link.share(message)
    if message:
        raise ConfigError(message)
