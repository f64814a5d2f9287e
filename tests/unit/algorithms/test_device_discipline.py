"""Device discipline: every tensor an algorithm hands to the Link lives on the runtime's device.

Under NCCL (what runtime.backend: auto picks on a GPU) a CPU tensor in a
collective fails; FedPFT's alignment once broadcast CPU indices and stats and
died at its first alignment round. These runs catch that class of bug on a
CPU-only machine: each rank runs in a thread of this process on a fake
accelerator (tests/fake_cluster.py), so a CPU tensor reaching the Link trips
`Link._check_device`, and one meeting a device tensor in an op fails as CUDA would.
"""
from __future__ import annotations

import pytest
import torch

from conftest import ROOT, TINY
from fake_cluster import FAKE, fake_device, run_cluster
from fedmpi.config import load_config
from fedmpi.errors import ConfigError
from fedmpi.runtime import Runtime

SPLITFED = ROOT / "configs" / "tiny_splitfed.yaml"
SFPROMPT = ROOT / "configs" / "tiny_sfprompt.yaml"
FEDPFT = ["model.num_layers=4", "algorithm=fedpft", "method.name=lora", "method.r=4", "federation.rounds=2",
          "options.distill_steps=2", "options.align_every=1", "options.align_steps=2", "options.align_neurons=3",
          "options.public_data=embedded", "options.public_samples=40"]


def _cfg(path, tmp_path, *sets):
    return load_config(path, [f"output.dir={tmp_path}", "output.progress=false", "federation.rounds=2", *sets])


def test_the_link_refuses_a_tensor_off_the_runtimes_device():
    from fedmpi.net.link import Link
    from fedmpi.net.clock import VirtualClock
    from fedmpi.net.profiles import LinkProfile

    rt = Runtime(0, 2, 0, 2, "test", "fake", FAKE)
    link = Link(rt, [LinkProfile(10.0, 10.0, 1.0)], VirtualClock(), [1e9], 1e9)
    with fake_device():
        with pytest.raises(ConfigError, match="the Link takes tensors on meta .* got one on cpu"):
            link.encode("down", "model", torch.zeros(3), -1)
        assert link.encode("down", "model", torch.zeros(3).to(FAKE), -1).nbytes == 12


def test_the_fake_accelerator_behaves_like_one():
    with fake_device():
        x = torch.arange(6.0).to(FAKE)
        assert x.device == FAKE and float((x * 2).sum()) == 30.0 and x.cpu().device.type == "cpu"
        assert (x + 1).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            x + torch.ones(6)
        x.copy_(torch.ones(6))  # a copy between devices is allowed, as on CUDA
        assert torch.zeros(2, device=FAKE).device == FAKE
        flag = torch.tensor([1], dtype=torch.int32, device=FAKE)  # Runtime.any_rank's control flag
        assert flag.device == FAKE and flag.item() == 1


@pytest.mark.parametrize("name,path,sets", [
    ("fedavg", TINY, ()),
    ("fedpft", TINY, FEDPFT),
    ("splitfed", SPLITFED, ()),
    ("sfprompt", SFPROMPT, ("options.local_loss_steps=2",)),
])
def test_every_algorithm_keeps_link_tensors_on_the_device(tmp_path, monkeypatch, name, path, sets):
    run = run_cluster(_cfg(path, tmp_path, *sets), 3, monkeypatch)
    assert run.summary is not None and run.engines[1].ctx.device == FAKE
    if name == "fedpft":
        assert run.summary["fedpft_align_rounds"] == [0, 1]  # alignment ran (and broadcast) twice


def test_a_cpu_tensor_at_the_link_is_caught(tmp_path, monkeypatch):
    """The control: FedPFT's old bug (the aligned neurons' values packed on the CPU, as
    `least_active`'s CPU output once made them) fails the run at the first alignment round
    with the Link's message, on a CPU-only machine."""
    from fedmpi.algorithms.fedpft import FedPFT

    real = FedPFT._neurons
    monkeypatch.setattr(FedPFT, "_neurons", lambda self, chosen: real(self, chosen).cpu())
    with pytest.raises(ConfigError, match="the Link takes tensors on meta .* got one on cpu"):
        run_cluster(_cfg(TINY, tmp_path, *FEDPFT), 3, monkeypatch)
