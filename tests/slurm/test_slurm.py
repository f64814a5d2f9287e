"""A sweep as a real Slurm job array on a one-node local cluster.

Starts Slurm with scripts/slurm-local/start.sh (root only; installs Debian's
Slurm with apt-get if missing), submits slurm/sweep.sbatch for a 3-entry grid
with ``sbatch --wait`` and checks every entry wrote its run folder. Every
Slurm command is wrapped in ``timeout``: a job asking for more CPUs than the
node advertises waits forever instead of failing.

Run it alone with ``pytest -m slurm tests/test_slurm.py``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
START = ROOT / "scripts" / "slurm-local" / "start.sh"
STOP = ROOT / "scripts" / "slurm-local" / "stop.sh"
TINY = ROOT / "configs" / "tiny.yaml"

pytestmark = pytest.mark.slurm


def _skip_reason() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root: scripts/slurm-local/start.sh installs packages and starts slurmctld/slurmd"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    if not TINY.is_file():
        return f"base config {TINY} is missing"
    try:
        import fedmpi.cli  # noqa: F401  (the core's `fedmpi run`)
    except ImportError as exc:
        return f"fedmpi.cli is not importable yet ({exc})"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    was_up = shutil.which("sinfo") is not None and subprocess.run(
        ["timeout", "10", "sinfo", "-h"], capture_output=True).returncode == 0
    proc = subprocess.run(["timeout", "300", str(START)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"local Slurm did not come up (start.sh exit {proc.returncode}): "
                    f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    yield
    if not was_up:  # leave a cluster someone else started alone
        subprocess.run(["timeout", "60", str(STOP)], capture_output=True)


def test_sweep_job_array_writes_every_run_folder(slurm, tmp_path):
    runs = tmp_path / "runs"
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "base": str(TINY),
        "set": {"output.dir": str(runs), "output.progress": False, "output.checkpoint": False,
                "federation.rounds": 1},
        "grid": {"method.name": ["lora", "bitfit", "head"]},
        "name": "slurm-{method.name}",
    }, sort_keys=False))
    count = subprocess.run([sys.executable, "-m", "fedmpi", "sweep", str(grid), "--count"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert count.returncode == 0, count.stderr
    n = int(count.stdout)
    assert n == 3

    env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    job = subprocess.run(
        ["timeout", "900", "sbatch", "--wait", f"--array=0-{n - 1}", "--ntasks=2", "--time=00:15:00",
         f"--output={tmp_path}/slurm-%A_%a.out", f"--chdir={ROOT}",
         str(ROOT / "slurm" / "sweep.sbatch"), str(grid)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=960)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("slurm-*.out")))
    assert job.returncode == 0, f"sbatch --wait exit {job.returncode}: {job.stdout}{job.stderr}\n{logs}"
    for method in ("lora", "bitfit", "head"):
        summary_file = runs / f"slurm-{method}" / "summary.json"
        assert summary_file.is_file(), f"no {summary_file}\n{logs}"
        summary = json.loads(summary_file.read_text())
        assert summary["method"] == method and summary["rounds"] == 1
    assert "via srun" in logs  # a 2-task allocation starts the ranks with srun
