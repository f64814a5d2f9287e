"""Pre-emption: SIGUSR1 (#SBATCH --signal=B:USR1@120, forwarded by fedmpi launch or
srun) writes the checkpoint at the next round boundary and exits 75; the
resumed job ends bit-identical to an uninterrupted one. (On Slurm, with the
requeue pattern of slurm/run.sbatch: tests/slurm/test_slurm.py.)"""
from __future__ import annotations

import signal
import time

import pytest

from conftest import assert_ok, launch
from test_job_signals import REALTIME, start, wait_for_rows

pytestmark = pytest.mark.mpi

SETS = ("federation.rounds=5", "federation.dropout=0.3", "output.checkpoint=false")
LINKS = REALTIME[1:]  # the same figures on the virtual clock: the same numbers, fast


def test_usr1_checkpoints_at_the_round_boundary_and_resume_is_bit_identical(tmp_path):
    whole = launch(tmp_path, 3, *SETS, *LINKS, name="whole")
    assert_ok(whole)
    proc = start(tmp_path, "pre", *SETS, *REALTIME)
    wait_for_rows(tmp_path / "pre", 1, proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    print(f"\n[preempt] SIGUSR1: exit {proc.returncode} in {time.monotonic() - t0:.1f} s: "
          f"{[x for x in err.splitlines() if x.startswith('fedmpi:')][-1:]}")
    assert proc.returncode == 75, err[-3000:]
    import torch

    rows = (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()
    saved = torch.load(tmp_path / "pre" / "checkpoint.pt", weights_only=False)
    # output.checkpoint=false: the checkpoint exists only because of the pre-emption
    assert saved["round"] == len(rows) - 1 and len(rows) < 5
    assert f"stopped by SIGUSR1 before round {len(rows)}: the checkpoint of round {len(rows) - 1}" in err
    resumed = launch(tmp_path, 3, *SETS, *REALTIME, name="pre", extra=("--resume",))
    assert_ok(resumed)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rs]  # noqa: E731
    assert strip(resumed.metrics) == strip(whole.metrics)
    assert resumed.ledger == whole.ledger
    for key in ("final_accuracy", "final_loss", "total_bytes_up", "emulated_seconds"):
        assert resumed.summary[key] == whole.summary[key], key
