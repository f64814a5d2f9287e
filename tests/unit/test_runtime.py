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


def test_batch_script_without_srun_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "SLURM_"))}
    env.update(SLURM_PROCID="0", SLURM_NTASKS="3", SLURM_JOB_ID="42")  # an sbatch step: no SLURM_STEP_ID
    proc = subprocess.run([sys.executable, "-m", "fedmpi", "run", str(TINY)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "start the ranks with 'srun" in proc.stderr
