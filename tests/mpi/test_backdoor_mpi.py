"""The backdoor attack under mpiexec: ASR reported at each evaluation and in the summary."""
from __future__ import annotations

import pytest

from conftest import assert_ok, launch


@pytest.mark.mpi
def test_backdoor_run_reports_asr(tmp_path):
    run = launch(tmp_path, 3, "attack.malicious_fraction=0.5", "attack.poison_rate=0.5", "attack.target_label=1",
                 "federation.rounds=2", name="backdoor", timeout=600)
    assert_ok(run)
    evaluated = [m for m in run.metrics if m["accuracy"] is not None]
    assert evaluated and all(0.0 <= m["attack_success_rate"] <= 1.0 for m in evaluated)
    assert run.summary["final_attack_success_rate"] == evaluated[-1]["attack_success_rate"]
