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
        "grid": {"method.name": ["lora", "head"]},  # two array tasks: each is a launch of ~20 s here
        "name": "slurm-{method.name}",
    }, sort_keys=False))
    count = subprocess.run([sys.executable, "-m", "fedmpi", "sweep", str(grid), "--count"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert count.returncode == 0, count.stderr
    n = int(count.stdout)
    assert n == 2

    env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    job = subprocess.run(
        ["timeout", "900", "sbatch", "--wait", f"--array=0-{n - 1}", "--ntasks=2", "--time=00:15:00",
         f"--output={tmp_path}/slurm-%A_%a.out", f"--chdir={ROOT}",
         str(ROOT / "slurm" / "sweep.sbatch"), str(grid)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=960)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("slurm-*.out")))
    assert job.returncode == 0, f"sbatch --wait exit {job.returncode}: {job.stdout}{job.stderr}\n{logs}"
    for method in ("lora", "head"):
        summary_file = runs / f"slurm-{method}" / "summary.json"
        assert summary_file.is_file(), f"no {summary_file}\n{logs}"
        summary = json.loads(summary_file.read_text())
        assert summary["method"] == method and summary["rounds"] == 1
    assert "via srun" in logs  # a 2-task allocation starts the ranks with srun


# -- signals and pre-emption under Slurm -----------------------------------------------
REALTIME = ("network.clock=realtime", "network.up_mbps=1000", "network.down_mbps=1000", "network.latency_ms=300")


def _sbatch(tmp_path: Path, name: str, *sets: str) -> str:
    """Submit slurm/run.sbatch (3 tasks) for configs/tiny.yaml; the job id."""
    args = []
    for s in (f"output.dir={tmp_path / 'runs'}", f"name={name}", "output.progress=false", *sets):
        args += ["--set", s]
    env = dict(os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(["timeout", "60", "sbatch", "--parsable", "--ntasks=3", "--time=00:10:00",
                          f"--output={tmp_path}/slurm-{name}.out", f"--chdir={ROOT}",
                          str(ROOT / "slurm" / "run.sbatch"), str(TINY), *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _wait(predicate, timeout: float, what: str, log: Path) -> None:
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} after {timeout} s\n{log.read_text()[-4000:] if log.exists() else ''}")


def _in_queue(job: str) -> bool:
    out = subprocess.run(["timeout", "10", "squeue", "-h", "-j", job], capture_output=True, text=True)
    return bool(out.stdout.strip())


def _job_processes(tmp_path: Path) -> list:
    """Every process whose command line names this test's folder (batch script, srun, ranks)."""
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if str(tmp_path) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_sigterm_under_srun_stops_every_rank_checkpoint_intact(slurm, tmp_path):
    """scancel --signal=TERM (what Slurm sends at the time limit, before SIGKILL) to the
    job's step: every rank stops at the next round boundary, the checkpoint of the
    last round is complete, and no process of the job is alive 10 s later."""
    import time

    import torch

    run_dir = tmp_path / "runs" / "term"
    job = _sbatch(tmp_path, "term", "federation.rounds=40", *REALTIME)
    log = tmp_path / "slurm-term.out"
    _wait(lambda: len(_rows(run_dir)) >= 1, 240, "no round finished", log)
    procs = _job_processes(tmp_path)
    assert len([p for p in procs if p.info["cmdline"][1:4] == ["-m", "fedmpi", "run"]]) == 3, procs
    t0 = time.monotonic()
    subprocess.run(["timeout", "10", "scancel", "--signal=TERM", job], check=True)
    _wait(lambda: all(not p.is_running() or p.status() == "zombie" for p in procs), 10, "ranks alive", log)
    took = time.monotonic() - t0
    time.sleep(max(0.0, 10 - took))
    assert _job_processes(tmp_path) == []
    rows = _rows(run_dir)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["round"] == rows[-1]["round"] < 39
    _wait(lambda: "stopped by SIGTERM" in log.read_text(), 30, "no stop message", log)
    print(f"\n[srun] SIGTERM: ranks gone in {took:.1f} s")


@pytest.mark.slow  # 5+ min: Slurm holds a requeued job before it starts again
def test_preemption_notice_requeues_and_the_job_resumes_bit_identically(slurm, tmp_path):
    """`#SBATCH --signal=B:USR1@120`, emulated with `scancel --batch --signal=USR1`: the
    script forwards it, fedmpi checkpoints at the round boundary and exits 75, the
    script requeues the job, and its second incarnation (--resume-or-start) ends
    with the metrics and ledger of an uninterrupted run."""
    sets = ("federation.rounds=5", "federation.dropout=0.3")
    whole = subprocess.run([sys.executable, "-m", "fedmpi", "launch", "-n", "3", str(TINY),
                            *[x for s in (f"output.dir={tmp_path / 'runs'}", "name=whole", "output.progress=false",
                                          *sets, *REALTIME[1:]) for x in ("--set", s)]],
                           cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    run_dir = tmp_path / "runs" / "pre"
    job = _sbatch(tmp_path, "pre", *sets, *REALTIME)
    log = tmp_path / "slurm-pre.out"
    _wait(lambda: len(_rows(run_dir)) >= 1, 240, "no round finished", log)
    subprocess.run(["timeout", "10", "scancel", "--batch", "--signal=USR1", job], check=True)
    _wait(lambda: "requeueing to resume" in log.read_text(), 120, "the job was not requeued", log)
    # Slurm holds a requeued job back ~2 minutes (BeginTime); let it start now.
    _wait(lambda: subprocess.run(["timeout", "10", "scontrol", "update", f"JobId={job}", "StartTime=now"],
                                 capture_output=True).returncode == 0, 60, "cannot release the requeued job", log)
    _wait(lambda: not _in_queue(job) and (run_dir / "summary.json").exists(), 300, "the requeued job did not end",
          log)
    text = log.read_text()
    assert "pre-emption notice (SIGUSR1)" in text and "requeueing to resume" in text, text[-4000:]
    assert "stopped by SIGUSR1 before round" in text and "(start 1)" in text, text[-4000:]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rs]  # noqa: E731
    assert strip(_rows(run_dir)) == strip(_rows(tmp_path / "runs" / "whole"))
    ledger = lambda d: (d / "ledger.jsonl").read_text()  # noqa: E731
    assert ledger(run_dir) == ledger(tmp_path / "runs" / "whole")
    assert json.loads((run_dir / "summary.json").read_text())["resumed"] is True
