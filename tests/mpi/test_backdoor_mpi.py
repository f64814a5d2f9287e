"""The backdoor attack under mpiexec: ASR reported at each evaluation and in the summary."""
from __future__ import annotations

import pytest

from conftest import assert_ok, launch


@pytest.mark.mpi
def test_backdoor_run_reports_asr(tmp_path):
    run = launch(tmp_path, 2, "attack.malicious_fraction=0.5", "attack.poison_rate=0.5", "attack.target_label=1",
                 "federation.rounds=2", name="backdoor", timeout=600)
    assert_ok(run)
    evaluated = [m for m in run.metrics if m["accuracy"] is not None]
    assert evaluated and all(0.0 <= m["attack_success_rate"] <= 1.0 for m in evaluated)
    assert run.summary["final_attack_success_rate"] == evaluated[-1]["attack_success_rate"]


@pytest.mark.mpi
def test_backdoor_verdict_fields_and_guaranteed_participation(tmp_path):
    """1 of 6 clients malicious (attack.malicious_fraction=0.17), at least 1 in every round's
    sample: 2 malicious client-rounds in 2 rounds; each evaluation reports ASR beside the
    same model's untriggered rate on the same samples."""
    run = launch(tmp_path, 2, "attack.malicious_fraction=0.17", "attack.min_malicious_per_round=1",
                 "attack.target_label=1", "federation.rounds=2", name="quota", timeout=600)
    assert_ok(run)
    assert [m["malicious_clients"] for m in run.metrics] == [1, 1]
    last = run.metrics[-1]
    assert last["malicious_client_rounds"] == 2 == run.summary["malicious_client_rounds"]
    assert 0.0 <= last["untriggered_target_rate"] <= 1.0
    assert last["asr_lift"] == pytest.approx(last["attack_success_rate"] - last["untriggered_target_rate"])
    assert run.summary["final_untriggered_target_rate"] == last["untriggered_target_rate"]
    assert len(run.summary["malicious_clients"]) == 1
