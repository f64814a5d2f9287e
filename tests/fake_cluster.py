"""A whole fedmpi job in one process, one thread per rank, on a fake accelerator.

Device bugs (a tensor left on the CPU that reaches the Link, or meets an
accelerator tensor in an op) only show on a GPU, under NCCL. This harness makes
them show on a CPU-only machine:

- `FakeDevice`: tensors moved to the `meta` device keep their data on the CPU
  (a wrapper subclass that reports `meta`), and an op that mixes them with a
  real CPU tensor fails as CUDA would ("Expected all tensors to be on the same
  device"). The Runtime's device is `meta`, so the Link's own check
  (`Link._check_device`) rejects any CPU tensor handed to it.
- `ThreadedWorld`: the few torch.distributed calls the Link and the Runtime make
  (broadcast, reduce, all_reduce, object collectives, send/recv), between
  threads, in place of a process group; rank = the calling thread's.

`run_cluster(cfg, ranks)` runs the engine on every rank and returns the
server's summary and every rank's engine, or raises the first rank's error.
"""
from __future__ import annotations

import copy
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils._pytree import tree_map
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

FAKE = torch.device("meta")  # what the fake accelerator reports
CROSS_DEVICE = {torch.ops.aten.copy_.default}  # ops CUDA lets mix devices (a copy between them)


class OnFake(torch.Tensor):
    """A CPU tensor that says it lives on FAKE."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(),
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                device=FAKE, requires_grad=elem.requires_grad)
        r.elem = elem
        return r

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:
        return f"OnFake({self.elem!r})"

    def tolist(self):  # not dispatched; a CUDA tensor's tolist() copies to the host too
        return self.elem.tolist()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        seen = {"fake": False, "cpu": None}

        def unwrap(x):
            if isinstance(x, OnFake):
                seen["fake"] = True
                return x.elem
            if isinstance(x, torch.Tensor) and x.dim() > 0:  # 0-dim CPU scalars mix with CUDA too
                seen["cpu"] = tuple(x.shape)
            return x

        a, k = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        if seen["fake"] and seen["cpu"] is not None and func not in CROSS_DEVICE:
            raise RuntimeError(f"{func}: Expected all tensors to be on the same device, but found a tensor on "
                               f"{FAKE} (the fake accelerator) and one of shape {seen['cpu']} on cpu")
        leaves = func is torch.ops.aten._to_copy.default and k.get("device") is not None and \
            torch.device(k["device"]).type == "cpu"
        if k.get("device") is not None and torch.device(k["device"]) == FAKE:
            k["device"] = torch.device("cpu")
        out = func(*a, **k)
        if leaves:  # .cpu() / .to("cpu"): a plain CPU tensor again
            return out
        return tree_map(lambda x: OnFake(x) if isinstance(x, torch.Tensor) else x, out)


class FakeDeviceMode(TorchDispatchMode):
    """Factory calls and `.to(...)` aimed at FAKE make OnFake tensors."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(issubclass(t, OnFake) for t in types):
            return NotImplemented
        dev = kwargs.get("device")
        if dev is not None and torch.device(dev) == FAKE:
            out = func(*args, **dict(kwargs, device=torch.device("cpu")))
            return tree_map(lambda x: OnFake(x) if isinstance(x, torch.Tensor) else x, out)
        return func(*args, **kwargs)


class FakeFactoryMode(TorchFunctionMode):
    """`torch.tensor(data, device=FAKE)` builds its tensor without dispatching an op
    that names the device (it would be a real, data-less meta tensor): build it on the
    CPU and wrap it instead."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dev = kwargs.get("device")
        if func in (torch.tensor, torch.as_tensor) and dev is not None and torch.device(dev) == FAKE:
            return OnFake(func(*args, **dict(kwargs, device=torch.device("cpu"))))
        return func(*args, **kwargs)


@contextmanager
def fake_device():
    """Enter the fake accelerator on this thread (module.to(FAKE) swaps parameters in)."""
    was = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        with FakeDeviceMode(), FakeFactoryMode():
            yield FAKE
    finally:
        torch.__future__.set_swap_module_params_on_conversion(was)


class ThreadedWorld:
    """The torch.distributed calls of fedmpi.net.link, between the threads of one process."""

    ReduceOp = SimpleNamespace(SUM="sum", MAX="max")

    def __init__(self, world: int, timeout: float = 120.0) -> None:
        self.world = world
        self.local = threading.local()
        self.barrier = threading.Barrier(world, timeout=timeout)
        self.slots: list[Any] = [None] * world
        self.pipes = {(s, d): queue.Queue() for s in range(world) for d in range(world)}
        self.timeout = timeout

    @property
    def rank(self) -> int:
        return self.local.rank

    def _exchange(self, value: Any) -> list[Any]:
        self.slots[self.rank] = value
        self.barrier.wait()
        seen = list(self.slots)
        self.barrier.wait()
        return seen

    # -- collectives ----------------------------------------------------------
    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        seen = self._exchange(tensor.detach().clone() if self.rank == src else None)
        if self.rank != src:
            tensor.copy_(seen[src])

    def reduce(self, tensor: torch.Tensor, dst: int, op=None) -> None:
        seen = self._exchange(tensor.detach().clone())
        if self.rank == dst:
            total = seen[0]
            for t in seen[1:]:
                total = total + t
            tensor.copy_(total)

    def all_reduce(self, tensor: torch.Tensor, op=None) -> None:
        seen = self._exchange(tensor.detach().clone())
        out = seen[0]
        for t in seen[1:]:
            out = torch.maximum(out, t) if op == self.ReduceOp.MAX else out + t
        tensor.copy_(out)

    def broadcast_object_list(self, box: list, src: int, device=None) -> None:
        seen = self._exchange(copy.deepcopy(box) if self.rank == src else None)
        box[:] = copy.deepcopy(seen[src])

    def gather_object(self, obj: Any, out: list | None, dst: int) -> None:
        seen = self._exchange(copy.deepcopy(obj))
        if self.rank == dst:
            out[:] = seen

    def barrier_(self) -> None:
        self.barrier.wait()

    # -- point to point ---------------------------------------------------------
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.pipes[(self.rank, dst)].put(tensor.detach().clone())

    def recv(self, tensor: torch.Tensor, src: int) -> None:
        tensor.copy_(self.pipes[(src, self.rank)].get(timeout=self.timeout))

    def send_object_list(self, box: list, dst: int, device=None) -> None:
        self.pipes[(self.rank, dst)].put(copy.deepcopy(box))

    def recv_object_list(self, box: list, src: int, device=None) -> None:
        box[:] = self.pipes[(src, self.rank)].get(timeout=self.timeout)

    def as_module(self) -> SimpleNamespace:
        """What `fedmpi.net.link` calls `dist`."""
        return SimpleNamespace(ReduceOp=self.ReduceOp, broadcast=self.broadcast, reduce=self.reduce,
                               all_reduce=self.all_reduce,
                               broadcast_object_list=self.broadcast_object_list, gather_object=self.gather_object,
                               barrier=self.barrier_, send=self.send, recv=self.recv,
                               send_object_list=self.send_object_list, recv_object_list=self.recv_object_list)


@dataclass
class ClusterRun:
    summary: dict[str, Any]
    engines: list[Any]  # rank -> its SyncEngine (ctx, algo, ...)


def run_cluster(cfg, ranks: int, monkeypatch, device: torch.device = FAKE) -> ClusterRun:
    """Every rank's engine in its own thread (on the fake accelerator unless `device` is the CPU);
    the server's summary and the engines, or the first error raised on any rank."""
    import fedmpi.net.link as link_module
    import fedmpi.runtime.runtime as runtime_module
    from fedmpi.experiment import build, prepare
    from fedmpi.runtime import Runtime

    world = ThreadedWorld(ranks)
    monkeypatch.setattr(link_module, "dist", world.as_module())
    monkeypatch.setattr(runtime_module, "dist", world.as_module())  # Runtime.any_rank (stopping on a signal)
    preps = [prepare(cfg) for _ in range(ranks)]  # each rank builds its own model, as under MPI
    results: list[Any] = [None] * ranks
    engines: list[Any] = [None] * ranks
    errors: list[tuple[int, BaseException]] = []

    def rank_main(rank: int) -> None:
        world.local.rank = rank
        rt = Runtime(rank, ranks, rank, ranks, "test", "fake", device)
        try:
            with (fake_device() if device == FAKE else _nothing()):
                engines[rank] = build(cfg, rt, preps[rank])
                results[rank] = engines[rank].run()
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append((rank, exc))
            world.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,), name=f"rank{r}", daemon=True) for r in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=world.timeout * 4)
    real = [(r, e) for r, e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        rank, exc = (real or errors)[0]
        raise exc
    return ClusterRun(results[0], engines)


@contextmanager
def _nothing():
    yield
