"""Launcher detection and bootstrap: MPI, Slurm and torchrun variables."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from fedmpi.cli import launch_command
from fedmpi.runtime import detect_launcher, first_slurm_host

from conftest import ROOT, TINY, Run, assert_ok


@pytest.mark.parametrize("env, expected", [
    ({}, "single"),
    ({"PMI_RANK": "0", "PMI_SIZE": "3"}, "mpi"),  # MPICH hydra
    ({"OMPI_COMM_WORLD_RANK": "1"}, "mpi"),  # Open MPI
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, "slurm"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "PMIX_RANK": "0"}, "mpi"),  # srun --mpi=pmix
    ({"RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "h", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, "torchrun"),
])
def test_detect_launcher(env, expected):
    assert detect_launcher(env) == expected


@pytest.mark.parametrize("nodelist, first", [
    ("node07", "node07"), ("gpu[03-05,9]", "gpu03"), ("cn[12,14],login1", "cn12"),
])
def test_first_slurm_host(nodelist, first, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the parser's answer
    assert first_slurm_host(nodelist) == first


def _fake_mpiexec(tmp_path, banner: str) -> str:
    path = tmp_path / "mpiexec"
    path.write_text(f"#!/bin/sh\necho '{banner}'\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_launch_adds_open_mpi_flags_only_for_open_mpi(tmp_path):
    ompi = _fake_mpiexec(tmp_path, "mpiexec (Open MPI) 5.0.8")
    cmd, env = launch_command(ompi, 4, ["cfg.yaml"])
    assert cmd[:5] == [ompi, "-n", "4", "--bind-to", "none"]
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    assert env["PRTE_MCA_rmaps_default_mapping_policy"] == ":oversubscribe"
    (tmp_path / "m").mkdir()
    mpich = _fake_mpiexec(tmp_path / "m", "HYDRA build details: Version: 5.0.2")
    cmd, env = launch_command(mpich, 3, ["cfg.yaml"])
    assert cmd == [mpich, "-n", "3", sys.executable, "-m", "fedmpi", "run", "cfg.yaml"]
    assert "--bind-to" not in cmd


@pytest.mark.mpi
def test_torchrun_bootstrap(tmp_path):
    """The same experiment started by torchrun instead of mpiexec."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3", "--master-port", "29731",
           "-m", "fedmpi", "run", str(TINY), "--set", f"output.dir={tmp_path}", "--set", "name=tr",
           "--set", "output.progress=false", "--set", "federation.rounds=1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "SLURM_"))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    run = Run(proc, tmp_path / "tr")
    assert_ok(run)
    assert run.summary["world_size"] == 3 and run.summary["rounds"] == 1


# -- multi-node layouts, from the environment alone ---------------------------------
from fedmpi.runtime.bootstrap import (expand_tasks_per_node, local_layout, slurm_endpoint,  # noqa: E402
                                      torchrun_endpoint)
from fedmpi.runtime.placement import Seat, plan  # noqa: E402


@pytest.mark.parametrize("spec, counts", [
    ("4", [4]), ("4(x2)", [4, 4]), ("3,2", [3, 2]), ("2(x3),1", [2, 2, 2, 1]), ("5,4(x2)", [5, 4, 4]),
])
def test_slurm_tasks_per_node_expands(spec, counts):
    assert expand_tasks_per_node(spec) == counts


def _slurm_env(rank: int, per_node: list[int], **extra) -> dict[str, str]:
    node = next(i for i in range(len(per_node)) if rank < sum(per_node[:i + 1]))
    spec = ",".join(str(n) for n in per_node)
    return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(sum(per_node)), "SLURM_STEP_ID": "0",
            "SLURM_JOB_ID": "4242", "SLURM_NODEID": str(node), "SLURM_LOCALID": str(rank - sum(per_node[:node])),
            "SLURM_STEP_TASKS_PER_NODE": spec, "SLURM_STEP_NODELIST": "gpu[07-08]",
            "SLURMD_NODENAME": f"gpu0{7 + node}", **extra}


def _fake_gpus(node: int, n: int = 4) -> tuple[str, ...]:
    return tuple(f"GPU-node{node}-{i}" for i in range(n))


def test_slurm_two_nodes_four_gpus_each_one_gpu_per_rank_nccl(monkeypatch):
    """sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-node=4: every rank its own GPU, NCCL,
    rendezvous on the first node, port from the job id."""
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: fedmpi's own nodelist parser
    eps = [slurm_endpoint(_slurm_env(r, [4, 4])) for r in range(8)]
    assert [(e.host, e.local_rank, e.local_world_size) for e in eps] == \
        [("gpu07", i, 4) for i in range(4)] + [("gpu08", i, 4) for i in range(4)]
    assert {(e.addr, e.port) for e in eps} == {("gpu07", 20000 + 4242 * 7 % 20000)}
    seats = [Seat(e.rank, e.host, e.local_rank, _fake_gpus(int(e.host[-1]) - 7)) for e in eps]
    p = plan(seats)
    assert p.backend == "nccl"
    assert [(x.host, x.gpu) for x in p.placements] == \
        [("gpu07", "GPU-node0-3")] + [("gpu07", f"GPU-node0-{i}") for i in range(3)] + \
        [("gpu08", f"GPU-node1-{i}") for i in range(4)]
    assert all(x.transport == x.device for x in p.placements)  # NCCL: the tensors travel from the GPU


def test_slurm_uneven_nodes_five_plus_four_ranks_stage_through_cpu(monkeypatch):
    """9 tasks on 2 nodes x 4 GPUs: node 0 holds 5 ranks, so one GPU is shared -> gloo
    with CPU staging; compute stays on the GPUs, clients spread before the server."""
    monkeypatch.setenv("PATH", "/nonexistent")
    eps = [slurm_endpoint(_slurm_env(r, [5, 4])) for r in range(9)]
    assert [e.local_world_size for e in eps] == [5] * 5 + [4] * 4
    seats = [Seat(e.rank, e.host, e.local_rank, _fake_gpus(int(e.host[-1]) - 7)) for e in eps]
    p = plan(seats)
    assert p.backend == "gloo" and "ranks outnumber GPUs" in p.reason
    assert [x.device for x in p.placements] == ["cuda:0", "cuda:0", "cuda:1", "cuda:2", "cuda:3",
                                                "cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert {x.transport for x in p.placements} == {"cpu"}


def test_slurm_gpus_per_task_each_rank_sees_one_distinct_gpu(monkeypatch):
    """--gpus-per-task=1: CUDA_VISIBLE_DEVICES gives each task one GPU as its cuda:0.
    Physical ids, not indices, tell the ranks apart: NCCL, not 'everyone on cuda:0 shared'."""
    monkeypatch.setenv("PATH", "/nonexistent")
    eps = [slurm_endpoint(_slurm_env(r, [4, 4])) for r in range(8)]
    seats = [Seat(e.rank, e.host, e.local_rank, (f"GPU-{e.host}-{e.local_rank}",)) for e in eps]
    p = plan(seats)
    assert p.backend == "nccl" and {x.device for x in p.placements} == {"cuda:0"}
    assert len({(x.host, x.gpu) for x in p.placements}) == 8


def test_batch_script_env_without_step_is_refused():
    env = _slurm_env(0, [3])
    del env["SLURM_STEP_ID"]
    with pytest.raises(Exception, match="start the ranks with 'srun"):
        slurm_endpoint(env)


def test_mpi_local_ranks_from_hosts():
    """mpirun -n 9 over two hosts (5 + 4, by slot): local rank and size per host."""
    hosts = ["a"] * 5 + ["b"] * 4
    assert [local_layout(hosts, r) for r in range(9)] == [(i, 5) for i in range(5)] + [(i, 4) for i in range(4)]
    assert [local_layout(["a", "b"] * 2, r) for r in range(4)] == [(0, 2), (0, 2), (1, 2), (1, 2)]  # round-robin


def test_torchrun_two_nodes():
    env = {"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "n1",
           "MASTER_PORT": "29400"}
    ep = torchrun_endpoint(env)
    assert (ep.rank, ep.world_size, ep.local_rank, ep.local_world_size, ep.addr, ep.port) == (6, 8, 2, 4, "n1", 29400)
