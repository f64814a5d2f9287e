"""Per-client state that survives between rounds: codec residuals, control variates.

The server holds the truth (`ClientStateStore`): each client's named tensors,
kept in memory up to a byte budget and spilled, least recently used first,
to files in the run folder. It is saved with the server's checkpoint, so a
resumed run continues from the same state, and it does not depend on which
rank hosts a client: the engine ships a sampled client's state to the rank
hosting it for the round (`ClientState` is that rank's view) and back after.

Spill files are never overwritten: a new version gets a new name, and a
superseded file is deleted only once a checkpoint no longer refers to it, so
a job killed between two checkpoints resumes from a consistent state.
"""
from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from fedmpi.atomic import atomic_torch_save

State = dict[str, torch.Tensor]
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def return_freed_memory_promptly(threshold: int = 64 * 1024) -> bool:
    """Serve allocations of >= `threshold` bytes with their own mappings (glibc).

    The store churns many same-sized tensors (received, kept, evicted). By default
    glibc raises its mmap threshold after the first free and then carves such
    tensors from the heap, where freed chunks stay resident between live ones:
    measured here, a 16 MB budget of 256 KB states held 36 MB of RSS; with a fixed
    threshold freed tensors go back to the OS at once (20 MB). Returns whether it
    applied (False off glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class ClientStateStore:
    """client -> {name: tensor}, bounded in memory, spilled to `spill_dir`."""

    def __init__(self, budget_bytes: int, spill_dir: Path | None = None, keep_superseded: bool = True) -> None:
        self.budget = int(budget_bytes)
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.keep_superseded = keep_superseded  # until a checkpoint stops referring to them
        self._memory: OrderedDict[int, State] = OrderedDict()  # least recently used first
        self._memory_bytes = 0
        self._spilled: dict[int, str] = {}  # client -> file name
        self._checkpointed: set[str] = set()  # files the last checkpoint refers to
        self._garbage: set[str] = set()
        self._seq = itertools.count()
        self.spills = 0

    # -- access -----------------------------------------------------------
    def __contains__(self, client: int) -> bool:
        return client in self._memory or client in self._spilled

    def __len__(self) -> int:
        return len(self._memory) + len(self._spilled)

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    def clients(self) -> list[int]:
        return sorted(set(self._memory) | set(self._spilled))

    def get(self, client: int) -> State | None:
        if client in self._memory:
            self._memory.move_to_end(client)
            return self._memory[client]
        name = self._spilled.get(client)
        if name is None:
            return None
        return torch.load(self.spill_dir / name, map_location="cpu", weights_only=True)

    def put(self, client: int, state: State, owned: bool = False) -> None:
        """Replace a client's state (detached CPU copies are kept; `owned`: the caller
        hands over tensors nothing else refers to, e.g. just received, and CPU ones are
        kept as they are)."""
        state = {k: v.detach().to("cpu", copy=not (owned and v.device.type == "cpu")) for k, v in state.items()}
        self._drop(client)
        self._memory[client] = state
        self._memory_bytes += state_bytes(state)
        self._evict()

    def _drop(self, client: int) -> None:
        old = self._memory.pop(client, None)
        if old is not None:
            self._memory_bytes -= state_bytes(old)
        name = self._spilled.pop(client, None)
        if name is not None:
            self._retire(name)

    def _retire(self, name: str) -> None:
        if self.keep_superseded and name in self._checkpointed:
            self._garbage.add(name)
        else:
            (self.spill_dir / name).unlink(missing_ok=True)

    def _evict(self) -> None:
        while self._memory_bytes > self.budget and self._memory:
            if self.spill_dir is None:
                raise MemoryError("client state exceeds state.memory_mb and there is no run folder to spill to")
            client, state = self._memory.popitem(last=False)
            self._memory_bytes -= state_bytes(state)
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            name = f"client{client}-{next(self._seq)}.pt"
            atomic_torch_save(state, self.spill_dir / name)
            self._spilled[client] = name
            self.spills += 1

    # -- checkpoint ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds: in-memory states and the names of spilled files."""
        return {"memory": dict(self._memory), "spilled": dict(self._spilled)}

    def committed(self) -> None:
        """The checkpoint holding `state_dict()` is durable: older files may go."""
        current = set(self._spilled.values())
        for name in (self._checkpointed | self._garbage) - current:
            (self.spill_dir / name).unlink(missing_ok=True)
        self._checkpointed, self._garbage = current, set()

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self._memory = OrderedDict(sorted(d.get("memory", {}).items()))
        self._memory_bytes = sum(state_bytes(s) for s in self._memory.values())
        self._spilled = dict(d.get("spilled", {}))
        self._checkpointed = set(self._spilled.values())
        if self.spill_dir is not None and self.spill_dir.is_dir():  # files written after that checkpoint
            for f in self.spill_dir.iterdir():
                if f.name not in self._checkpointed:
                    f.unlink()
        numbers = [int(n.rsplit("-", 1)[1].split(".")[0]) for n in self._spilled.values()]
        self._seq = itertools.count(max(numbers, default=-1) + 1)
        self._evict()

    def digest(self) -> str:
        """sha256 over every client's state, in client and name order (tests, summaries)."""
        h = hashlib.sha256()
        for client in self.clients():
            state = self.get(client)
            for name in sorted(state):
                t = state[name].contiguous()
                h.update(f"{client}/{name}/{t.dtype}/{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


class ClientState:
    """A rank's view of the state of the clients it hosts this round.

    `of(client)` is a mutable dict; whatever is in it after the round goes back
    to the server's store. `enabled` is False unless some plug-in asked for
    per-client state, and then the engine ships nothing."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self._here: dict[int, State] = {}

    def of(self, client: int) -> State:
        if not self.enabled:
            raise RuntimeError("per-client state is off: declare `uses_client_state = True` on the plug-in")
        return self._here.setdefault(client, {})

    def load(self, client: int, state: State | None) -> None:
        self._here[client] = dict(state or {})

    def take(self, client: int) -> State | None:
        return self._here.pop(client, None)

    def clear(self) -> None:
        self._here.clear()
