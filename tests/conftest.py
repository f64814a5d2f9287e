"""Shared fixtures: run fedmpi under real mpiexec, find ../shared/data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDMPI_SHARED_DATA", ROOT.parent / "shared" / "data"))
TINY = ROOT / "configs" / "tiny.yaml"


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    dir: Path

    @property
    def summary(self) -> dict:
        return json.loads((self.dir / "summary.json").read_text())

    @property
    def metrics(self) -> list[dict]:
        return [json.loads(x) for x in (self.dir / "metrics.jsonl").read_text().splitlines() if x.strip()]

    @property
    def ledger(self) -> list[dict]:
        return [json.loads(x) for x in (self.dir / "ledger.jsonl").read_text().splitlines() if x.strip()]


def launch(tmp_path: Path, ranks: int, *overrides: str, config: Path | str = TINY, name: str = "run",
           timeout: float = 300, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Run:
    """`fedmpi launch -n ranks config --set ...` with output under tmp_path.

    A launch costs ~10 s of imports (torch, transformers) per rank process on 2 cores, far
    more than a tiny run's rounds: a test of one feature launches 2 ranks (the server and
    one client rank hosting every client); 3 or more where ranks are the point (packing,
    signals reaching every rank, clients moving between ranks)."""
    sets = [f"output.dir={tmp_path}", f"name={name}", "output.progress=false", *overrides]
    cmd = [sys.executable, "-m", "fedmpi", "launch", "-n", str(ranks), str(config), *extra]
    for s in sets:
        cmd += ["--set", s]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                    **(env or {}))
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    return Run(proc, tmp_path / name)


def assert_ok(run: Run) -> None:
    assert run.proc.returncode == 0, f"fedmpi failed ({run.proc.returncode}):\n{run.proc.stdout[-3000:]}\n{run.proc.stderr[-6000:]}"


@pytest.fixture(scope="session")
def single_rank():
    """A one-rank gloo process group: enough for the server side of the Link
    and the Aggregator, in-process."""
    import torch
    import torch.distributed as dist

    from fedmpi.runtime import Runtime

    store = dist.FileStore(str(Path(tempfile.mkdtemp()) / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield Runtime(0, 1, 0, 1, "test", "gloo", torch.device("cpu"))
    dist.destroy_process_group()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}: the real-dataset tests need it "
                    "(set FEDMPI_SHARED_DATA to its path)")
    return SHARED_DATA


# The default run keeps one real launch per feature family; these widen a family's matrix
# (more methods, more signals, more strategy families, a second recipe of the same check) or
# take minutes, and run with `python -m pytest -m slow`. Listed here, in one place, so the
# default run's cost is readable at a glance (CI must stay under 15 minutes on 2 cores).
WIDER_MATRIX = {
    "tests/mpi/test_peft.py::test_method_trains_and_ledger_holds_only_trainable_state[adapter]",
    "tests/mpi/test_peft.py::test_method_trains_and_ledger_holds_only_trainable_state[bitfit]",
    "tests/mpi/test_peft.py::test_method_trains_and_ledger_holds_only_trainable_state[head]",
    "tests/mpi/test_peft.py::test_method_trains_and_ledger_holds_only_trainable_state[federa-server]",
    "tests/mpi/test_llm.py::test_other_methods_train_and_travel_exactly_their_state[prompt-128-extra0]",
    "tests/mpi/test_llm.py::test_other_methods_train_and_travel_exactly_their_state[full-None-extra2]",
    "tests/mpi/test_llm.py::test_ranks_share_one_conversion_through_the_cache_lock",
    "tests/mpi/test_strategies.py::test_each_family_is_independent_of_rank_packing[server]",
    "tests/mpi/test_strategies.py::test_each_family_is_independent_of_rank_packing[robust]",
    "tests/mpi/test_strategies.py::test_each_family_is_independent_of_rank_packing[client]",
    "tests/mpi/test_split_mpi.py::test_splitfed_with_one_client_is_fedavg_exactly",
    "tests/mpi/test_split_mpi.py::test_sfprompt_trains_prompt_and_tail_with_a_frozen_body",
    "tests/mpi/test_job_signals.py::test_a_signal_stops_every_rank_at_a_round_boundary[SIGINT]",
    "tests/mpi/test_job_signals.py::test_a_signal_stops_every_rank_at_a_round_boundary[SIGHUP]",
    "tests/mpi/test_job_signals.py::test_a_round_past_the_grace_period_is_abandoned_checkpoint_intact",
    "tests/mpi/test_preemption.py::test_usr1_checkpoints_at_the_round_boundary_and_resume_is_bit_identical",
    "tests/mpi/test_run_folder.py::test_a_killed_launcher_takes_its_job_down_and_the_stale_lock_is_reported",
    "tests/mpi/test_fedpft_mpi.py::test_no_align_mode_sends_no_stats",
    "tests/mpi/test_fedpft_mpi.py::test_resume_after_a_kill_matches_the_uninterrupted_run",
    "tests/mpi/test_client_memory_cap.py::test_fedavg_client_memory_is_the_model_its_gradients_and_adamw_state[lora]",
    "tests/mpi/test_client_memory_cap.py::test_a_split_client_holds_only_its_head_and_tail",
    "tests/mpi/test_client_state.py::test_state_spills_and_memory_stays_bounded",
    "tests/mpi/test_client_state.py::test_state_after_a_kill_and_resume_is_the_uninterrupted_state",
    "tests/mpi/test_failures.py::test_sigkill_ends_the_job_and_resume_matches[2]",
    "tests/mpi/test_failures.py::test_dropout_renormalises_over_arrived_clients",
    "tests/mpi/test_vision.py::test_vision_on_mnist[tiny-clip-prompt-0.03]",
    "tests/mpi/test_tracker_mpi.py::test_mlflow_run_in_the_run_folder",
    "tests/mpi/test_backdoor_mpi.py::test_backdoor_run_reports_asr",
    "tests/mpi/test_server_link.py::test_downloads_share_the_server_uplink_and_uploads_its_downlink",
    "tests/mpi/test_recost.py::test_recost_equals_a_run_under_the_other_links",
    "tests/unit/runtime/test_bootstrap.py::test_torchrun_bootstrap",
    "tests/unit/runtime/test_bootstrap.py::test_torchrun_two_nodes",
    "tests/mpi/test_client_state.py::test_state_is_the_same_on_3_and_5_ranks",
    "tests/mpi/test_launch.py::test_local_mpich_and_torchrun_recipes_agree",
    "tests/mpi/test_split_mpi.py::test_sfprompt_on_a_vit_splits_at_the_patch_embedding",
    "tests/mpi/test_llm.py::test_other_methods_train_and_travel_exactly_their_state[federa-1024-extra1]",
    "tests/mpi/test_recost.py::test_recost_is_refused_when_time_decided_who_took_part",
    "tests/mpi/test_client_memory_cap.py::test_a_memory_cap_below_the_need_refuses_the_run",
    # full fine-tuning's bytes per message: test_fedavg.py::test_bytes_are_the_trainable_state_size
    "tests/mpi/test_peft.py::test_method_trains_and_ledger_holds_only_trainable_state[full]",
    # device discipline of the split algorithms: the fedavg and sfprompt cases and the caught CPU tensor stay
    "tests/unit/algorithms/test_device_discipline.py::test_every_algorithm_keeps_link_tensors_on_the_device[fedpft-path1-sets1]",
    "tests/unit/algorithms/test_device_discipline.py::test_every_algorithm_keeps_link_tensors_on_the_device[splitfed-path2-sets2]",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in WIDER_MATRIX:
            item.add_marker(pytest.mark.slow)


def tiny_split_setup():
    """(cfg, prepared model/data, FederatedData) of configs/tiny_splitfed.yaml: what the split
    tests (unit and MPI) build their SplitModel and batches from."""
    from fedmpi.config import load_config
    from fedmpi.data.federated import FederatedData
    from fedmpi.experiment import prepare

    cfg = load_config(ROOT / "configs" / "tiny_splitfed.yaml")
    prep = prepare(cfg)
    data = FederatedData(prep.dataset, prep.parts, prep.task.encoder(prep.tokenizer), cfg.seed)
    return cfg, prep, data
