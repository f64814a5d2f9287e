"""The launch recipes in launch/ start a working job, and all give the same result."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY

pytestmark = pytest.mark.mpi
LAUNCH = ROOT / "launch"


def run_recipe(recipe: str, tmp: Path, name: str, env: dict[str, str] | None = None) -> dict:
    cmd = ["bash", str(LAUNCH / recipe), "3", str(TINY), "--set", f"output.dir={tmp}", "--set", f"name={name}",
           "--set", "federation.rounds=1", "--set", "output.progress=false"]
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHON=sys.executable, **(env or {}))
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{recipe} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads((tmp / name / "summary.json").read_text())


def test_local_mpich_and_torchrun_recipes_agree(tmp_path):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    local = run_recipe("local.sh", tmp_path, "local")
    mpich = run_recipe("mpirun-mpich.sh", tmp_path, "mpich", {"MPIEXEC": str(mpiexec)})
    torchrun = run_recipe("torchrun.sh", tmp_path, "torchrun",
                          {"TORCHRUN": shutil.which("torchrun", path=str(Path(sys.executable).parent))
                           or "torchrun", "MASTER_PORT": "29731"})
    for s in (mpich, torchrun):
        assert s["world_size"] == 3
        for key in ("final_accuracy", "final_loss", "total_bytes_up", "total_client_flops", "emulated_seconds"):
            assert s[key] == local[key], key


def test_a_recipe_without_arguments_prints_its_usage():
    for recipe in sorted(p.name for p in LAUNCH.glob("*.sh")):
        proc = subprocess.run(["bash", str(LAUNCH / recipe)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "usage:" in proc.stderr, recipe
